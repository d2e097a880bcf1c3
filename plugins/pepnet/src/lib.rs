//! PEPNet (Chang et al., "PEPNet: Parameter and Embedding Personalized
//! Network for Infusing with Personalized Prior Information", KDD 2023,
//! arXiv 2302.01115): one model for several domains AND several tasks.
//!
//! The `pepnet` template:
//!
//! ```text
//! input E [B, W] ──> epnet ──> ppnet-gates ──┬─> tower-<task 0> (ppnet-tower, slot 0)
//!  (embeddings,     O_ep =      [O_ep | per    └─> tower-<task 1> (ppnet-tower, slot 1) ...
//!   dense values)   delta_d*E    layer, per task factors]
//! ```
//!
//! - [`gate_nu`]: the Gate NU, `x' = ReLU(x W + b)`, `delta = gamma *
//!   sigmoid(x' W' + b')`, `gamma = 2` by default.
//! - [`epnet`](mod@epnet): `delta_domain = GateNU(E(F_d) (+) stopgrad(E))`, `O_ep =
//!   delta_domain * E`, `F_d` the domain id (a table of the node) plus the
//!   named `domain_features`.
//! - [`ppnet_gates`]: per tower layer `l` one Gate NU over `E(prior) (+)
//!   stopgrad(O_ep)` whose `T x d_l` output is split over the `T` tasks.
//! - [`ppnet_tower`]: per task, `H_(l+1) = act((delta_task^l * H_l) W_l +
//!   b_l)` from `H_0 = O_ep`, and the logit from `delta_task^L * H_L`.
//!
//! # Modelling choices the paper leaves open (made here)
//!
//! - **EPNet's granularity**: one factor per input column (the shared
//!   input is the concatenation of the sparse embeddings and the dense
//!   values, `E = E(F_S) (+) E(F_D)`), the finest element-wise reading of
//!   `delta_domain (x) E`; a factor per field is the special case of equal
//!   factors within a field, which the gate can learn.
//! - **Domain-side features**: the domain id is always one (an embedding
//!   table of the `epnet` node, `domain_dim` wide, so the template works on
//!   any data with domains); `domain_features` adds named features (domain
//!   statistics such as exposure counts). They are side features: the
//!   paper keeps `F_d` out of the general input `E`.
//! - **Prior features**: named by `prior` (the paper's user, item and author
//!   side features; `user_id` and `item_id` of the built-in multi-domain
//!   data by default). They stay in the general input too, as ids are in
//!   the paper's `F_S`; the PPNet gates receive their gradient (only
//!   `O_ep` is stopped).
//! - **Which layers PPNet personalises**: the input of every layer of every
//!   tower, the output layer's included (`L + 1` Gate NUs for `L` hidden
//!   layers), so that each task's whole DNN is personalised as in the
//!   paper's figure; one Gate NU per layer shared by the tasks and split,
//!   as `delta_task` is split in the paper.
//! - **Gate NU hidden width**: `gate_hidden` (32), one value for every Gate
//!   NU; the paper does not give it.
//! - **Ablations**: `epnet = false` (PPNet over the plain input) and
//!   `ppnet = false` (plain `mlp-tower`s over `O_ep`), the paper's ablations.
//! - **Sizes**: small defaults for the built-in synthetic data; the paper's
//!   industrial sizes are not reproduced.

pub mod epnet;
pub mod gate_nu;
pub mod ppnet_gates;
pub mod ppnet_tower;

use mtrec_core::components::dense::Activation;
use mtrec_core::protocol::{check_units, tower_id, towers};
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

pub use epnet::{Epnet, EpnetKind, EpnetParams};
use gate_nu::check_gate;
pub use gate_nu::GateNu;
pub use ppnet_gates::{Layout, PpnetGates, PpnetGatesKind, PpnetGatesParams};
pub use ppnet_tower::{PpnetTower, PpnetTowerKind, PpnetTowerParams};

/// The paper's `gamma`: factors in `(0, 2)`, 1 meaning "no change".
pub const DEFAULT_GAMMA: f64 = 2.0;
pub const DEFAULT_GATE_HIDDEN: usize = 32;

/// Checks that each of `names` (the values of `key`) is a sparse or dense
/// feature of the data.
pub(crate) fn check_names(key: &str, names: &[String], env: &GraphEnv) -> std::result::Result<(), String> {
    let f = &env.features;
    match names.iter().find(|n| f.feature_width(n).is_none()) {
        None => Ok(()),
        Some(name) => {
            let list = |v: Vec<&str>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            Err(format!(
                "`{key}` names `{name}`, which is no sparse or dense feature of the data (sparse: {}; dense: {})",
                list(f.sparse.iter().map(|s| s.name.as_str()).collect()),
                list(f.dense.iter().map(String::as_str).collect())
            ))
        }
    }
}

/// The `pepnet` template's parameters (`[model]` with `arch = "pepnet"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PepnetParams {
    /// EPNet (off: the ablation without it; then no domains are needed).
    pub epnet: bool,
    /// Domain-side features besides the domain id, kept out of the input.
    pub domain_features: Vec<String>,
    /// Width of EPNet's embedding of the domain id.
    pub domain_dim: usize,
    /// PPNet (off: plain `mlp-tower`s over EPNet's output).
    pub ppnet: bool,
    /// PPNet's prior features (user, item, author ids...).
    pub prior: Vec<String>,
    /// Hidden units of each task tower.
    pub tower_units: Vec<usize>,
    pub activation: Activation,
    /// Hidden width of every Gate NU.
    pub gate_hidden: usize,
    /// The Gate NUs' `gamma`.
    pub gamma: f64,
}

impl Default for PepnetParams {
    fn default() -> Self {
        Self {
            epnet: true,
            domain_features: Vec::new(),
            domain_dim: 4,
            ppnet: true,
            prior: vec!["user_id".into(), "item_id".into()],
            tower_units: vec![16, 8],
            activation: Activation::Relu,
            gate_hidden: DEFAULT_GATE_HIDDEN,
            gamma: DEFAULT_GAMMA,
        }
    }
}

pub struct Pepnet;

fn param_error(key: &str, message: String) -> Error {
    Error::arch_param(Pepnet::NAME, key, message)
}

/// The ids of the template's shared nodes.
pub const EPNET: &str = "epnet";
pub const PPNET_GATES: &str = "ppnet-gates";

impl Template for Pepnet {
    const NAME: &'static str = "pepnet";
    const SUMMARY: &'static str = "PEPNet (KDD'23): Gate NUs personalise the embeddings per domain (EPNet) and every task tower layer from prior features (PPNet)";
    type Params = PepnetParams;
    fn side_features(&self, p: &PepnetParams) -> Vec<String> {
        if p.epnet {
            p.domain_features.clone()
        } else {
            Vec::new()
        }
    }
    fn expand(&self, p: &PepnetParams, env: &GraphEnv) -> Result<GraphSpec> {
        Ok(GraphSpec {
            nodes: expand_pepnet(p, env)?,
        })
    }
}

/// The PEPNet graph for `p` on data described by `env`. Values that parse
/// but do not fit the data are errors naming their `[model]` key.
pub fn expand_pepnet(p: &PepnetParams, env: &GraphEnv) -> Result<Vec<NodeSpec>> {
    if !p.epnet && !p.ppnet {
        return Err(param_error(
            "epnet",
            "`epnet` and `ppnet` are both false: that is Shared-Bottom without a bottom (use `shared-bottom`)".into(),
        ));
    }
    if !p.epnet && !p.domain_features.is_empty() {
        return Err(param_error(
            "domain_features",
            "`domain_features` are read by EPNet only, and `epnet = false`: remove them or turn EPNet on".into(),
        ));
    }
    check_gate(p.gate_hidden, p.gamma).map_err(|(key, m)| param_error(key, m))?;
    check_units(&p.tower_units, true).map_err(|m| param_error("tower_units", m))?;
    if p.epnet && p.domain_dim == 0 {
        return Err(param_error(
            "domain_dim",
            "`domain_dim` must be at least 1 (the width of EPNet's domain id embedding)".into(),
        ));
    }
    let mut nodes = Vec::new();
    let mut last = INPUT.to_string();
    if p.epnet {
        if env.domains == 0 {
            return Err(Error::GraphWide(
                "architecture `pepnet` personalises the embeddings per domain (EPNet): it needs a domain id per \
                 row, and this data has no domains (use a source with a domain column, e.g. \
                 `multi-domain-synthetic`, or set `epnet = false`)"
                    .into(),
            ));
        }
        check_names("domain_features", &p.domain_features, env).map_err(|m| param_error("domain_features", m))?;
        if let Some(n) = p.domain_features.iter().find(|n| p.prior.contains(n)) {
            return Err(param_error(
                "domain_features",
                format!("`{n}` is both a domain feature (kept out of the input) and a prior feature: name it once"),
            ));
        }
        let epnet = EpnetParams {
            domain_features: p.domain_features.clone(),
            domain_dim: p.domain_dim,
            gate_hidden: p.gate_hidden,
            gamma: p.gamma,
        };
        nodes.push(NodeSpec::of(EPNET, &EpnetKind, &epnet).input(&last));
        last = EPNET.into();
    }
    if !p.ppnet {
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| last.clone()));
        return Ok(nodes);
    }
    if p.prior.is_empty() {
        return Err(param_error(
            "prior",
            "`prior` names no feature: PPNet personalises the towers from prior features, e.g. prior = \
             [\"user_id\", \"item_id\"] (or set `ppnet = false`)"
                .into(),
        ));
    }
    check_names("prior", &p.prior, env).map_err(|m| param_error("prior", m))?;
    let tasks = env.tasks.len();
    let gates = PpnetGatesParams {
        prior: p.prior.clone(),
        units: p.tower_units.clone(),
        tasks,
        gate_hidden: p.gate_hidden,
        gamma: p.gamma,
    };
    nodes.push(NodeSpec::of(PPNET_GATES, &PpnetGatesKind, &gates).input(&last));
    for (slot, t) in env.tasks.iter().enumerate() {
        let tower = PpnetTowerParams {
            units: p.tower_units.clone(),
            tasks,
            slot,
            activation: p.activation,
        };
        nodes.push(
            NodeSpec::of(tower_id(&t.name), &PpnetTowerKind, &tower)
                .input(PPNET_GATES)
                .task(&t.name),
        );
    }
    Ok(nodes)
}

mtrec_core::register_template!(Pepnet);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
