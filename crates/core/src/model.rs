//! The one model runtime: a validated graph of built components over the
//! feature input layer.

use candle_core::{Device, Tensor};

use crate::component::{Component, Port};
use crate::error::{Error, Result};
use crate::features::{FeatureInput, FeatureSpec, TouchedRows};
use crate::graph::{self, CheckedGraph, GraphEnv, GraphSpec, Source};
use crate::inputs::{ForwardCtx, Inputs};
use crate::params::{ParamBuilder, ParamStore};
use crate::task::TaskInfo;

struct Node {
    id: String,
    comp: Component,
    inputs: Vec<Source>,
    experts: Vec<Source>,
    /// For gates: a label per expert mixed, `bank#i`.
    expert_labels: Vec<String>,
}

/// The gate weights of one gate node for one batch.
#[derive(Clone, Debug)]
pub struct GateRecord {
    pub node: String,
    /// One label per expert, `bank#i`, in the order of the weight columns.
    pub experts: Vec<String>,
    /// `[B, n]`, rows non-negative and summing to 1.
    pub weights: Tensor,
}

/// What a forward pass returns.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// Per task (in task order): `[B]` logits (binary) or predictions (regression).
    pub outputs: Vec<Tensor>,
    /// Every gate's weights, in evaluation order.
    pub gates: Vec<GateRecord>,
    /// In training, the embedding-table rows the pass read (their
    /// gradients are the tables' row-sparse gradients); empty in evaluation.
    pub touched: Vec<TouchedRows>,
    /// In training, the terms components added to the objective
    /// ([`ForwardCtx::add_penalty`]); empty in evaluation.
    pub penalties: Vec<crate::inputs::Penalty>,
}

impl ModelOutput {
    /// Rows `inverse[r]` of every output and gate weight: back in batch order.
    fn reordered(self, inverse: &Tensor) -> Result<Self> {
        let outputs = self
            .outputs
            .iter()
            .map(|o| Ok(o.index_select(inverse, 0)?))
            .collect::<Result<Vec<_>>>()?;
        let gates = self
            .gates
            .into_iter()
            .map(|g| {
                Ok(GateRecord {
                    weights: g.weights.index_select(inverse, 0)?,
                    ..g
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            outputs,
            gates,
            touched: self.touched,
            penalties: self.penalties,
        })
    }
}

pub struct Model {
    features: FeatureInput,
    nodes: Vec<Node>,
    order: Vec<usize>,
    towers: Vec<usize>,
    tasks: Vec<TaskInfo>,
    graph: GraphSpec,
    store: ParamStore,
    device: Device,
    /// Optimizer steps taken so far, set by the trainer before each training
    /// pass and handed to components in [`ForwardCtx::step`].
    step: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("nodes", &self.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>())
            .field("parameters", &self.store.parameter_count())
            .finish()
    }
}

enum Value {
    Dense(Tensor),
    Bank(Tensor),
}

impl Model {
    /// Validates `graph` and builds every weight, drawing initial values from
    /// `seed` in a fixed order (features, then nodes in evaluation order).
    pub fn build(
        graph: &GraphSpec,
        features: &FeatureSpec,
        tasks: &[TaskInfo],
        domains: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let env = GraphEnv {
            input_width: features.width(),
            features: features.clone(),
            tasks: tasks.to_vec(),
            domains,
        };
        let checked = graph::validate(graph, &env)?;
        Self::from_checked(checked, features, &env, seed, device)
    }

    fn from_checked(
        checked: CheckedGraph,
        features: &FeatureSpec,
        env: &GraphEnv,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(&store, seed, device);
        let input = FeatureInput::new(features, &pb.pp("features"))?;
        let (inputs, experts) = graph::resolve(&checked.spec)?;
        let mut built: Vec<Option<Node>> = (0..checked.spec.nodes.len()).map(|_| None).collect();
        for &i in &checked.order {
            let spec = &checked.spec.nodes[i];
            let kind = crate::registry::component(&spec.kind)?;
            let comp = kind.build(&checked.params[i], &checked.io[i], env, &pb.pp(&spec.id))?;
            if comp.role() != kind.role() {
                return Err(spec.error(format!(
                    "component kind `{}` declared role {} but built a {}",
                    spec.kind,
                    kind.role().as_str(),
                    comp.role().as_str()
                )));
            }
            let mut expert_labels = Vec::new();
            for (name, port) in spec.experts.iter().zip(&checked.io[i].experts) {
                if let Port::Bank { count, .. } = port {
                    expert_labels.extend((0..*count).map(|k| format!("{name}#{k}")));
                }
            }
            built[i] = Some(Node {
                id: spec.id.clone(),
                comp,
                inputs: inputs[i].clone(),
                experts: experts[i].clone(),
                expert_labels,
            });
        }
        let nodes = built
            .into_iter()
            .map(|n| n.ok_or_else(|| Error::GraphWide("internal: a node was not built".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            features: input,
            nodes,
            order: checked.order,
            towers: checked.towers,
            tasks: env.tasks.clone(),
            graph: checked.spec,
            store,
            device: device.clone(),
            step: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn tasks(&self) -> &[TaskInfo] {
        &self.tasks
    }
    pub fn graph(&self) -> &GraphSpec {
        &self.graph
    }
    pub fn params(&self) -> &ParamStore {
        &self.store
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn features(&self) -> &FeatureSpec {
        self.features.spec()
    }
    /// Where each embedded feature's rows sit in the tables.
    pub fn field_rows(&self) -> Vec<crate::features::FieldRows> {
        self.features.field_rows()
    }

    /// For each task (task order), the ids of the graph nodes whose output
    /// reaches its tower (the tower included): the model's structure, not
    /// any batch's gradients.
    pub fn nodes_reaching_tasks(&self) -> Vec<std::collections::BTreeSet<&str>> {
        self.towers
            .iter()
            .map(|&t| {
                let mut seen = std::collections::BTreeSet::new();
                let mut stack = vec![t];
                while let Some(i) = stack.pop() {
                    if !seen.insert(self.nodes[i].id.as_str()) {
                        continue;
                    }
                    for s in self.nodes[i].inputs.iter().chain(&self.nodes[i].experts) {
                        if let Source::Node(j) = s {
                            stack.push(*j);
                        }
                    }
                }
                seen
            })
            .collect()
    }

    /// The dense variables that feed at least two tasks' losses by the
    /// model's structure: those of graph nodes reached from two or more
    /// towers (a variable's node is its name's first segment), sorted by
    /// name. Every variable of such a node counts, whether or not a given
    /// batch reaches it (e.g. a domain's parameters in a batch without that
    /// domain). Embedding tables are not listed: their touched rows are
    /// judged per batch ([`crate::TouchedRows`]).
    pub fn shared_vars(&self) -> Vec<(String, candle_core::Var)> {
        let reach = self.nodes_reaching_tasks();
        self.store
            .vars()
            .into_iter()
            .filter(|(name, _)| {
                let node = name.split('.').next().unwrap_or("");
                reach.iter().filter(|nodes| nodes.contains(node)).count() >= 2
            })
            .collect()
    }

    /// Records that `step` optimizer steps have been taken: the next passes'
    /// [`ForwardCtx::step`]. The trainer calls it before every training batch
    /// (a resumed run with its restored count).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, std::sync::atomic::Ordering::Relaxed);
    }

    /// The count last given to [`Model::set_step`] (0 for a fresh model).
    pub fn step(&self) -> u64 {
        self.step.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The model on one batch: per task `[B]` outputs in the batch's row order.
    ///
    /// Rows are first put in domain order (a stable sort, when the batch has
    /// domains and is not already sorted) and the outputs put back: every
    /// per-domain component (STAR's norm, layers and towers, SAR-Net's
    /// experts) then finds each domain's rows as one contiguous block, a view,
    /// instead of gathering, concatenating and un-permuting them at every
    /// node. Rows are independent, and batch statistics are per domain or over
    /// the whole batch, so only the order of float additions changes.
    pub fn forward(&self, inputs: &Inputs, train: bool) -> Result<ModelOutput> {
        match inputs.sorted_by_domain()? {
            None => self.forward_rows(inputs, train),
            Some((sorted, inverse)) => {
                let out = self.forward_rows(&sorted, train)?;
                out.reordered(&inverse)
            }
        }
    }

    fn forward_rows(&self, inputs: &Inputs, train: bool) -> Result<ModelOutput> {
        let (x, views) = self.features.forward_with_views(inputs, train)?;
        let penalties = crate::inputs::Penalties::default();
        let ctx = ForwardCtx {
            train,
            domains: inputs.domains.as_ref(),
            features: Some(&views),
            step: self.step(),
            penalties: Some(&penalties),
        };
        let mut values: Vec<Option<Value>> = (0..self.nodes.len()).map(|_| None).collect();
        let mut gates = Vec::new();
        for &i in &self.order {
            let node = &self.nodes[i];
            let get = |s: &Source| -> Result<&Tensor> {
                match s {
                    Source::Input => Ok(&x),
                    Source::Node(j) => match &values[*j] {
                        Some(Value::Dense(t)) | Some(Value::Bank(t)) => Ok(t),
                        None => Err(Error::GraphWide(format!("internal: `{}` read before it ran", node.id))),
                    },
                }
            };
            let out = match &node.comp {
                Component::Expert(e) => Value::Bank(e.forward(get(&node.inputs[0])?, &ctx)?),
                Component::Layer(l) => Value::Dense(l.forward(get(&node.inputs[0])?, &ctx)?),
                Component::Tower(t) => Value::Dense(t.forward(get(&node.inputs[0])?, &ctx)?),
                Component::Fusion(f) => {
                    let xs = node
                        .inputs
                        .iter()
                        .map(|s| get(s).cloned())
                        .collect::<Result<Vec<_>>>()?;
                    Value::Dense(f.forward(&xs, &ctx)?)
                }
                Component::Gate(g) => {
                    let w = g.weights(get(&node.inputs[0])?, &ctx)?;
                    let banks = node
                        .experts
                        .iter()
                        .map(|s| get(s).cloned())
                        .collect::<Result<Vec<_>>>()?;
                    gates.push(GateRecord {
                        node: node.id.clone(),
                        experts: node.expert_labels.clone(),
                        weights: w.clone(),
                    });
                    // Several banks are mixed as one without concatenating them.
                    Value::Dense(crate::ops::mix(&w, &banks)?)
                }
            };
            values[i] = Some(out);
        }
        let outputs = self
            .towers
            .iter()
            .map(|&t| match &values[t] {
                Some(Value::Dense(v)) => Ok(v.squeeze(1)?),
                _ => Err(Error::GraphWide("internal: tower produced no value".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelOutput {
            outputs,
            gates,
            touched: views.into_touched(),
            penalties: penalties.into_inner(),
        })
    }
}
