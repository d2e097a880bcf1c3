//! STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive
//! Recommender for Multi-Domain CTR Prediction", CIKM 2021, arXiv 2101.11427).
//!
//! One model serves every domain; each row carries its domain id `p`
//! (`ForwardCtx::domains`). Three parts, each a component kind registered by
//! this crate:
//!
//! - [`partitioned-norm`](norm) (PN, a layer) on the FCN's input: per-domain
//!   batch statistics in training, per-domain moving averages in evaluation,
//!   `(gamma * gamma_p)` scale and `(beta + beta_p)` shift; a domain with
//!   fewer than two rows in a training batch has no batch statistics: it is
//!   normalised with its moving averages (as in evaluation) and leaves them
//!   untouched, and `[train] batch_size = 1` is refused by the runner for a
//!   graph with such a node ([`batch_statistics_nodes`]);
//! - [`star-fcn`](fcn) (a layer): per layer `W*_p = W * W_p` (elementwise),
//!   `b*_p = b + b_p`, `out_p = act(in_p W*_p + b*_p)`, activation after every
//!   layer; `W_p` starts at ones and `b_p` at zeros (training starts from the
//!   shared network);
//! - [`star-tower`](tower) (a tower): star-topology layers down to the main
//!   logit `s_m`, plus the auxiliary network (domain-indicator embedding ->
//!   2-layer MLP -> `s_a`), output `s_m + s_a` (prediction `sigmoid(s_m + s_a)`).
//!   The auxiliary network lives inside the tower because a task's output must
//!   be its tower and a tower reads one input: a separate node could only be
//!   concatenated into the tower's input, not added to its logit. It reads
//!   only the domain id (the paper also feeds "other domain features"; here
//!   the domain id is the only domain feature the graph carries).
//!
//! Every per-domain computation groups the batch's rows by domain: one
//! `index_select` per domain present, one matmul per domain and layer, then
//! the rows are put back in order with the inverse permutation. No per-row
//! weight tensors.
//!
//! The `star` template: `input -> partitioned-norm -> star-fcn -> one
//! star-tower per task`. STAR in the paper is single-task (CTR), where the FCN
//! runs from PN down to the logit. For `K` tasks the hidden star layers
//! (`star-fcn`) are shared by all tasks and each task has its own star output
//! layer and its own auxiliary network (in `tower-<task>`); with one task
//! this is exactly the paper's model. Defaults: star layers `[64, 32]`, sized
//! for the built-in synthetic data; the paper's industrial model is wider (see
//! its experimental settings), so set `units` for real data. The template
//! needs data with domains and says so otherwise.

pub mod fcn;
pub mod norm;
mod norm_op;
pub mod tower;

use mtrec_core::components::dense::Activation;
use mtrec_core::protocol::tower_id;
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

pub use fcn::{StarFcn, StarFcnKind, StarFcnParams, StarLinear, StarStack};
pub use norm::{PartitionedNorm, PartitionedNormKind, PartitionedNormParams, MIN_GROUP_ROWS};
pub use tower::{AuxNet, StarTower, StarTowerKind, StarTowerParams};

/// The component kinds of this crate that normalise with batch statistics
/// in training (a one-row batch has none).
pub const BATCH_STATISTICS_KINDS: &[&str] = &["partitioned-norm"];

/// The ids of `graph`'s nodes that normalise with batch statistics in
/// training, in graph order: a training batch must give each domain at
/// least [`MIN_GROUP_ROWS`] rows for them to update their moving
/// statistics, so the runner refuses `batch_size = 1` when this is not
/// empty. (A query on the graph rather than on the architecture, so that
/// `arch = "graph"` configs with a `partitioned-norm` node are covered too.)
pub fn batch_statistics_nodes(graph: &GraphSpec) -> Vec<&str> {
    graph
        .nodes
        .iter()
        .filter(|n| BATCH_STATISTICS_KINDS.contains(&n.kind.as_str()))
        .map(|n| n.id.as_str())
        .collect()
}

/// The `star` template's parameters (`[model]` with `arch = "star"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StarParams {
    /// Partitioned normalization on the FCN input (off: the ablation
    /// without PN).
    pub norm: bool,
    /// Weight of the current batch in PN's moving averages, in (0, 1].
    pub norm_momentum: f64,
    /// PN's variance epsilon.
    pub norm_eps: f64,
    /// Hidden star-topology layers shared by the tasks; may be empty.
    pub units: Vec<usize>,
    /// Hidden star-topology layers of each task's tower, before its star
    /// output layer; may be empty.
    pub tower_units: Vec<usize>,
    pub activation: Activation,
    /// The auxiliary network (off: the ablation without it).
    pub aux: bool,
    pub aux_embedding_dim: usize,
    pub aux_units: Vec<usize>,
}

impl Default for StarParams {
    fn default() -> Self {
        Self {
            norm: true,
            norm_momentum: 0.1,
            norm_eps: 1e-5,
            units: vec![64, 32],
            tower_units: Vec::new(),
            activation: Activation::Relu,
            aux: true,
            aux_embedding_dim: 8,
            aux_units: vec![8],
        }
    }
}

pub struct Star;

impl Template for Star {
    const NAME: &'static str = "star";
    const SUMMARY: &'static str =
        "STAR (CIKM'21): partitioned norm, star-topology FCN (W * W_p per domain), auxiliary domain network";
    type Params = StarParams;
    fn expand(&self, p: &StarParams, env: &GraphEnv) -> Result<GraphSpec> {
        Ok(GraphSpec {
            nodes: expand_star(p, env)?,
        })
    }
}

/// The STAR graph for `p` on data described by `env`.
pub fn expand_star(p: &StarParams, env: &GraphEnv) -> Result<Vec<NodeSpec>> {
    if env.domains == 0 {
        return Err(Error::GraphWide(
            "architecture `star` is a multi-domain model: it needs a domain id per row, and this data has \
             no domains (use a source with a domain column, e.g. `multi-domain-synthetic`)"
                .into(),
        ));
    }
    let mut nodes = Vec::new();
    let mut last = INPUT.to_string();
    if p.norm {
        let norm = PartitionedNormParams {
            momentum: p.norm_momentum,
            eps: p.norm_eps,
        };
        nodes.push(NodeSpec::of("partitioned-norm", &PartitionedNormKind, &norm).input(&last));
        last = "partitioned-norm".into();
    }
    if !p.units.is_empty() {
        let fcn = StarFcnParams {
            units: p.units.clone(),
            activation: p.activation,
        };
        nodes.push(NodeSpec::of("star-fcn", &StarFcnKind, &fcn).input(&last));
        last = "star-fcn".into();
    }
    let tower = StarTowerParams {
        units: p.tower_units.clone(),
        activation: p.activation,
        aux: p.aux,
        aux_embedding_dim: p.aux_embedding_dim,
        aux_units: p.aux_units.clone(),
    };
    for t in &env.tasks {
        nodes.push(
            NodeSpec::of(tower_id(&t.name), &StarTowerKind, &tower)
                .input(&last)
                .task(&t.name),
        );
    }
    Ok(nodes)
}

mtrec_core::register_template!(Star);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
