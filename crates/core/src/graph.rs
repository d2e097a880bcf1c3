//! The graph description every architecture expands into, and its validation.
//!
//! A graph is a list of nodes, each an instance of a registered component kind,
//! wired by name. The reserved name [`INPUT`] is the model's feature vector.
//! [`validate`] checks everything that can be checked without weights: unique
//! ids, known kinds, known inputs, no cycle, the role's wiring (gates over
//! expert banks, towers for known tasks), widths, every task with exactly one
//! tower, every node used (feeding a tower, or a node of an objective-term
//! kind, [`crate::Kind::objective_term`], which may end a path).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::component::{Port, Role};
use crate::error::{Error, Result};
use crate::protocol::{to_table, Kind, NodeParams};
use crate::registry;
use crate::task::TaskInfo;

/// The reserved node id of the model's input: the concatenated feature
/// embeddings and dense features, `[B, input_width]`.
pub const INPUT: &str = "input";

/// One node of a graph.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique name; also the prefix of the node's parameter names.
    pub id: String,
    /// A registered component kind (`mtrec list` shows them).
    pub kind: String,
    /// Dense inputs: a node id or `input`. A gate's one input is its selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// For gates only: the expert banks mixed, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<String>,
    /// For towers only: the task this tower predicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The kind's own parameters (e.g. `count`, `units`).
    #[serde(flatten)]
    pub params: toml::Table,
    /// Where the node was written (file and line), for error messages.
    #[serde(skip)]
    pub origin: Option<String>,
}

impl PartialEq for NodeSpec {
    /// Equal as graphs: where a node was written does not matter.
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
            && self.kind == o.kind
            && self.inputs == o.inputs
            && self.experts == o.experts
            && self.task == o.task
            && self.params == o.params
    }
}

impl NodeSpec {
    pub fn new(id: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            inputs: Vec::new(),
            experts: Vec::new(),
            task: None,
            params: toml::Table::new(),
            origin: None,
        }
    }
    /// A node of kind `kind` with its typed parameters: what templates
    /// write, so that a misspelt kind or parameter does not compile.
    pub fn of<K: Kind>(id: impl Into<String>, kind: &K, params: &K::Params) -> Self {
        let mut node = Self::new(id, kind.name());
        node.params = to_table(params);
        node
    }
    pub fn input(mut self, id: impl Into<String>) -> Self {
        self.inputs.push(id.into());
        self
    }
    pub fn inputs<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.inputs.extend(ids.into_iter().map(Into::into));
        self
    }
    pub fn experts<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.experts.extend(ids.into_iter().map(Into::into));
        self
    }
    pub fn task(mut self, task: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self
    }
    /// Sets a parameter by name, as a config file would: for graphs
    /// assembled as data (tests, tools). Templates use [`NodeSpec::of`],
    /// which the compiler checks.
    pub fn param(mut self, key: &str, value: impl Serialize) -> Self {
        // Values built in code are plain numbers, strings and lists: they
        // always convert; a failure would be a bug in the caller's types.
        if let Ok(v) = toml::Value::try_from(value) {
            self.params.insert(key.to_string(), v);
        }
        self
    }

    /// An error about this node, with its origin.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Graph {
            node: self.id.clone(),
            origin: self.origin.clone(),
            message: message.into(),
        }
    }
}

/// A whole graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    pub nodes: Vec<NodeSpec>,
}

/// What a graph is built for: facts of the data, not of the architecture.
#[derive(Clone, Debug, Default)]
pub struct GraphEnv {
    /// Width of the [`INPUT`] node.
    pub input_width: usize,
    /// The features behind the input (for components that read features
    /// themselves through `ForwardCtx::features`, e.g. SAR-Net's attention).
    pub features: crate::features::FeatureSpec,
    pub tasks: Vec<TaskInfo>,
    /// Number of domains of the data (0 when the data has none).
    pub domains: usize,
}

/// The inputs of one node as the validator resolved them.
#[derive(Clone, Debug)]
pub struct NodeIo {
    pub inputs: Vec<Port>,
    pub experts: Vec<Port>,
}

impl NodeIo {
    /// Total number of experts over the `experts` banks (what a gate
    /// weighs); dense ports count none.
    pub fn expert_count(&self) -> usize {
        self.experts
            .iter()
            .map(|p| match p {
                Port::Bank { count, .. } => *count,
                Port::Dense { .. } => 0,
            })
            .sum()
    }
}

/// A graph that passed validation, with its evaluation order and ports.
#[derive(Clone, Debug)]
pub struct CheckedGraph {
    pub spec: GraphSpec,
    /// Node indices in an order where every node comes after its inputs.
    pub order: Vec<usize>,
    /// Each node's resolved inputs and output port, by node index.
    pub io: Vec<NodeIo>,
    pub outputs: Vec<Port>,
    /// For each task (in `env.tasks` order), the index of its tower.
    pub towers: Vec<usize>,
    /// Each node's parameters, parsed once by its kind.
    pub params: Vec<NodeParams>,
}

/// A reference to a node's output, or to the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Input,
    Node(usize),
}

/// Each node's resolved `inputs` and `experts`.
pub(crate) type Wiring = (Vec<Vec<Source>>, Vec<Vec<Source>>);

pub(crate) fn resolve(spec: &GraphSpec) -> Result<Wiring> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        if n.id.is_empty() {
            return Err(n.error("a node needs a non-empty `id`"));
        }
        if !n.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(n.error("a node id may hold only letters, digits, `_` and `-` (it prefixes parameter names)"));
        }
        if n.id == INPUT {
            return Err(n.error(format!("`{INPUT}` is reserved for the model input; pick another id")));
        }
        if let Some(&j) = ids.get(n.id.as_str()) {
            let first = spec.nodes[j]
                .origin
                .as_deref()
                .map(|o| format!(" (first at {o})"))
                .unwrap_or_default();
            return Err(n.error(format!("duplicate node id: another node already has this id{first}")));
        }
        ids.insert(&n.id, i);
    }
    let lookup = |n: &crate::graph::NodeSpec, what: &str, name: &str| -> Result<Source> {
        if name == INPUT {
            return Ok(Source::Input);
        }
        ids.get(name).map(|&i| Source::Node(i)).ok_or_else(|| {
            let mut known: Vec<&str> = ids.keys().copied().collect();
            known.sort_unstable();
            known.insert(0, INPUT);
            n.error(format!("unknown {what} `{name}`; known nodes: {}", known.join(", ")))
        })
    };
    let mut inputs = Vec::new();
    let mut experts = Vec::new();
    for n in &spec.nodes {
        inputs.push(
            n.inputs
                .iter()
                .map(|s| lookup(n, "input", s))
                .collect::<Result<Vec<_>>>()?,
        );
        experts.push(
            n.experts
                .iter()
                .map(|s| lookup(n, "expert bank", s))
                .collect::<Result<Vec<_>>>()?,
        );
    }
    Ok((inputs, experts))
}

/// Kahn's algorithm; on a cycle, names the nodes on it.
fn topological_order(spec: &GraphSpec, deps: &[Vec<usize>]) -> Result<Vec<usize>> {
    let n = spec.nodes.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            users[j].push(i);
        }
    }
    // Keep the written order among ready nodes, so that parameter draws are
    // in a stable, readable order.
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < n {
        // Walk dependencies among the stuck nodes until one repeats: a cycle.
        let stuck: Vec<usize> = (0..n).filter(|&i| indegree[i] > 0).collect();
        let mut path = vec![stuck[0]];
        loop {
            let cur = *path.last().unwrap_or(&stuck[0]);
            let next = deps[cur].iter().copied().find(|d| indegree[*d] > 0).unwrap_or(cur);
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cycle: Vec<&str> = path[pos..].iter().rev().map(|&i| spec.nodes[i].id.as_str()).collect();
                cycle.push(&spec.nodes[next].id);
                return Err(spec.nodes[next].error(format!("cycle: {}", cycle.join(" -> "))));
            }
            path.push(next);
        }
    }
    Ok(order)
}

/// Checks a graph against the registered component kinds and the data.
pub fn validate(spec: &GraphSpec, env: &GraphEnv) -> Result<CheckedGraph> {
    let (inputs, experts) = resolve(spec)?;
    let kinds = spec
        .nodes
        .iter()
        .map(|n| registry::component(&n.kind).map_err(|e| n.error(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let params = spec
        .nodes
        .iter()
        .zip(&kinds)
        .map(|(n, k)| {
            k.parse(&n.params).map_err(|error| Error::NodeParams {
                node: n.id.clone(),
                origin: n.origin.clone(),
                kind: n.kind.clone(),
                error: Box::new(error),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let deps: Vec<Vec<usize>> = inputs
        .iter()
        .zip(&experts)
        .map(|(a, b)| {
            a.iter()
                .chain(b)
                .filter_map(|s| match s {
                    Source::Node(j) => Some(*j),
                    Source::Input => None,
                })
                .collect()
        })
        .collect();
    let order = topological_order(spec, &deps)?;

    let tasks: BTreeMap<&str, usize> = env
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut outputs: Vec<Option<Port>> = vec![None; spec.nodes.len()];
    let mut io: Vec<Option<NodeIo>> = vec![None; spec.nodes.len()];
    let mut towers: Vec<Option<usize>> = vec![None; env.tasks.len()];
    let port_of = |s: &Source, outputs: &[Option<Port>]| match s {
        Source::Input => Some(Port::Dense { width: env.input_width }),
        Source::Node(j) => outputs[*j],
    };
    for &i in &order {
        let node = &spec.nodes[i];
        let kind = kinds[i];
        let role = kind.role();
        let ins: Vec<Port> = inputs[i].iter().filter_map(|s| port_of(s, &outputs)).collect();
        let exs: Vec<Port> = experts[i].iter().filter_map(|s| port_of(s, &outputs)).collect();
        // Role wiring, checked here once for every kind.
        let name_of = |s: &Source| match s {
            Source::Input => INPUT.to_string(),
            Source::Node(j) => spec.nodes[*j].id.clone(),
        };
        for (s, p) in inputs[i].iter().zip(&ins) {
            if let Port::Bank { .. } = p {
                return Err(node.error(format!(
                    "input `{}` is an expert bank; a bank can only be mixed by a gate (list it under `experts` of a gate)",
                    name_of(s)
                )));
            }
        }
        if role != Role::Gate && !node.experts.is_empty() {
            return Err(node.error(format!(
                "`experts` is for gates; a {} node reads `inputs` only",
                role.as_str()
            )));
        }
        if role != Role::Tower && node.task.is_some() {
            return Err(node.error(format!("`task` is for towers; this is a {} node", role.as_str())));
        }
        match role {
            Role::Fusion => {
                if ins.is_empty() {
                    return Err(node.error("a fusion needs at least one input"));
                }
            }
            _ => {
                if ins.len() != 1 {
                    return Err(node.error(format!(
                        "a {} node reads exactly one input, got {}",
                        role.as_str(),
                        ins.len()
                    )));
                }
            }
        }
        if role == Role::Gate {
            if node.experts.is_empty() {
                return Err(node.error("a gate over zero experts: list the expert banks it mixes under `experts`"));
            }
            for (s, p) in experts[i].iter().zip(&exs) {
                if let Port::Dense { .. } = p {
                    return Err(node.error(format!("`{}` under `experts` is not an expert bank", name_of(s))));
                }
            }
            let w0 = exs[0].width();
            if let Some((s, p)) = experts[i].iter().zip(&exs).find(|(_, p)| p.width() != w0) {
                return Err(node.error(format!(
                    "width mismatch: expert bank `{}` outputs width {}, but `{}` outputs width {w0}; a gate mixes banks of one width",
                    name_of(s),
                    p.width(),
                    node.experts[0]
                )));
            }
        }
        if role == Role::Tower {
            let task = node
                .task
                .as_deref()
                .ok_or_else(|| node.error("a tower needs `task = \"<task name>\"`"))?;
            let t = *tasks.get(task).ok_or_else(|| {
                node.error(format!(
                    "tower for unknown task `{task}`; the tasks are: {}",
                    env.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            if let Some(other) = towers[t] {
                return Err(node.error(format!(
                    "task `{task}` already has the tower `{}`",
                    spec.nodes[other].id
                )));
            }
            towers[t] = Some(i);
        }
        let nio = NodeIo {
            inputs: ins,
            experts: exs,
        };
        let out = kind.check(&params[i], &nio, env).map_err(|m| node.error(m))?;
        let expected_ok = match (role, out) {
            (Role::Expert, Port::Bank { .. }) => true,
            (Role::Tower, Port::Dense { width: 1 }) => true,
            (Role::Tower, _) | (Role::Expert, _) => false,
            (_, Port::Dense { .. }) => true,
            _ => false,
        };
        if !expected_ok {
            return Err(node.error(format!(
                "component kind `{}` declared role {} but produces {out}",
                node.kind,
                role.as_str()
            )));
        }
        outputs[i] = Some(out);
        io[i] = Some(nio);
    }
    let towers = towers
        .iter()
        .zip(&env.tasks)
        .map(|(t, task)| {
            t.ok_or_else(|| {
                Error::GraphWide(format!(
                    "task `{}` has no tower: add a node with a tower kind and `task = \"{}\"`",
                    task.name, task.name
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Every node must feed some tower or an objective term: an unused node
    // would hold weights that never train.
    let mut used = vec![false; spec.nodes.len()];
    let mut stack: Vec<usize> = towers.clone();
    stack.extend((0..spec.nodes.len()).filter(|&i| kinds[i].objective_term()));
    while let Some(i) = stack.pop() {
        if !used[i] {
            used[i] = true;
            stack.extend(deps[i].iter().copied());
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(spec.nodes[i].error("this node feeds no tower (nor an objective term): remove it or wire it in"));
    }
    let outputs = outputs
        .into_iter()
        .map(|o| o.unwrap_or(Port::Dense { width: 0 }))
        .collect();
    let io = io
        .into_iter()
        .map(|o| {
            o.unwrap_or(NodeIo {
                inputs: vec![],
                experts: vec![],
            })
        })
        .collect();
    Ok(CheckedGraph {
        spec: spec.clone(),
        order,
        io,
        outputs,
        towers,
        params,
    })
}

impl GraphSpec {
    /// The graph as TOML (`[[nodes]]` tables), which [`GraphSpec::from_toml`] reads back.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::GraphWide(format!("cannot print graph as TOML: {e}")))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::GraphWide(e.to_string()))
    }
}
