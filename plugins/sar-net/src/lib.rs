//! SAR-Net (Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for
//! Personalized Fair Recommendation in Hundreds of Travel Scenarios",
//! CIKM 2021, arXiv 2110.06475).
//!
//! One ranking model for many scenarios (domains). The `sar-net` template:
//!
//! ```text
//! input [B, W] ──> sar-behaviour ──> scenario-transform ──┬─> experts-shared   (sar-experts)
//!   (target item,   (interest vector    (x * w_s + b_s)    └─> experts-scenario (sar-experts, per scenario)
//!    other fields)   appended)                     gate-<task> (sar-gate, [x; e_s]) ──> tower-<task>
//! ```
//!
//! - [`sar-behaviour`](behaviour): cross-scenario behaviour extraction. Item
//!   attention (target item vs each behaviour item) and scenario attention
//!   (current scenario context vs each behaviour's scenario) pool the
//!   behaviour sequence into an interest vector, appended to the input.
//! - [`scenario-transform`](transform): `x' = x * w_s + b_s`, per-scenario
//!   scale (init ones) and shift (init zeros), gathered per row.
//! - [`sar-experts`](experts): scenario-shared experts and scenario-specific
//!   experts (one set per scenario, rows grouped by domain), each a main MLP
//!   plus a bias network over the debias features `z`, whose output is
//!   weighed per sample by the Fairness Coefficient `FC(z)` and added in
//!   training only: `e_k = main_k(x) + FC(z) * bias_k(z)`; serving uses
//!   `main_k(x)`.
//! - [`sar-gate`](gate): per task, a softmax gate over all experts usable
//!   for the row, conditioned on the input and a scenario embedding.
//! - one `mlp-tower` per task.
//!
//! # Modelling choices the paper leaves open (made here)
//!
//! - **Attention form**: scaled dot product with a learned query projection,
//!   `s1_j = (e_target W_i) . e_item_j / sqrt(d)` and
//!   `s2_j = (c W_s) . e_scen_j / sqrt(d)`; the paper names the two
//!   attentions but not their scoring function.
//! - **Combining the two attentions**: `a = softmax_j(s1_j + s2_j)` over the
//!   real positions (the renormalised product of the two softmax
//!   distributions). Padding gets weight exactly 0; a row without behaviours
//!   gets the zero interest vector.
//! - **Values**: the behaviour item embeddings (the scenario embeddings only
//!   steer the weights). The interest vector is concatenated to the input,
//!   and the behaviour sequences are side features (not also mean-pooled
//!   into the input).
//! - **Current scenario context**: the embedding of `scenario_field` (a
//!   sparse field, e.g. `domain`, whose table the behaviour-scenario sequence
//!   shares) when set, else a table of the attention node indexed by the
//!   domain id.
//! - **Where the transform applies**: to the whole input after behaviour
//!   extraction (embeddings, dense features, interest vector), before the
//!   experts.
//! - **Debias bias network**: `bias_units` hidden layers then a linear layer
//!   to the expert's width, its output added to the expert output (training
//!   only). Debias features are side features: never in the main input, not
//!   read at evaluation.
//! - **Fairness Coefficient (FC)**: the paper defines FC as a per-sample
//!   importance, learned, that reweighs the prediction of the debias expert
//!   networks, used in training only. Its section's equations were not
//!   available to us (only the abstract and secondary descriptions: see
//!   `docs/results/sar-net-debias.md`), so the form is our reading:
//!   `FC(z) = sigmoid(MLP_fc(z))`, one scalar in `(0, 1)` per row, from the
//!   debias features only, multiplying the bias network's output inside
//!   every expert: `e_k = main_k(x) + FC(z) * bias_k(z)`. Rejected readings:
//!   FC scaling the main network's output or the whole expert output, since
//!   the towers would then see outputs of another scale in training than at
//!   serving (where FC is dropped). One FC network per expert bank
//!   (`fc_units` hidden layers, default `[8]`), shared by the bank's experts
//!   and scenarios: it weighs a sample, not an expert. No extra loss on FC:
//!   it is learned end to end through the task losses. `fairness_coefficient
//!   = false` is the ablation `main_k(x) + bias_k(z)`. Another reading exists
//!   in public code (FC a per-sample number given with the data, scaling a
//!   per-scenario embedding fed to the bias network): see the results doc.
//!   Neither is confirmed by the paper's text.
//! - **Gate**: one gate per task (the paper is single-task CTR; for several
//!   tasks this is MMoE's per-task gating), `softmax([x'; e_s] W + b)` over
//!   `shared_experts + scenario_experts` experts, `e_s` the gate's own
//!   scenario embedding.
//! - **Towers**: the paper's gate fuses the experts "into the logit"; here
//!   the experts output vectors (`expert_units`), the gate mixes them, and
//!   one `mlp-tower` per task maps the mix to the logit (`tower_units = []`:
//!   one linear layer, the closest to the paper).
//! - **Sizes**: defaults are small, for the built-in synthetic data; the
//!   paper's industrial sizes are not reproduced.

pub mod behaviour;
pub mod experts;
pub mod gate;
pub mod transform;

use mtrec_core::components::dense::Activation;
use mtrec_core::protocol::towers;
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

pub use behaviour::{BehaviourExtraction, BehaviourKind, BehaviourParams};
pub use experts::{DebiasExperts, DebiasExpertsKind, DebiasExpertsParams};
pub use gate::{ScenarioGate, ScenarioGateKind, ScenarioGateParams};
pub use transform::{ScenarioTransform, ScenarioTransformKind, ScenarioTransformParams};

/// The `sar-net` template's parameters (`[model]` with `arch = "sar-net"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SarNetParams {
    /// Sequence feature of the user's behaviour items.
    pub behaviour_items: String,
    /// Sequence feature of each behaviour's scenario, aligned with `behaviour_items`.
    pub behaviour_scenarios: String,
    /// Sparse field of the target item (the item-attention query).
    pub target_item: String,
    /// Sparse field whose embedding is the current scenario context (the
    /// scenario-attention query); empty: a table indexed by the domain id.
    pub scenario_field: String,
    /// Width of that table (when `scenario_field` is empty).
    pub scenario_dim: usize,
    /// Debias features (sparse or dense), read by the experts' bias networks
    /// in training only and kept out of the model input.
    pub debias: Vec<String>,
    /// Scenario-shared experts.
    pub shared_experts: usize,
    /// Scenario-specific experts per scenario.
    pub scenario_experts: usize,
    pub expert_units: Vec<usize>,
    /// Hidden layers of each expert's bias network (then a linear layer).
    pub bias_units: Vec<usize>,
    /// Weigh the bias networks' output per sample with the Fairness
    /// Coefficient `FC(z)` learned from the debias features (off: the
    /// ablation `main + bias`). No effect without debias features.
    pub fairness_coefficient: bool,
    /// Hidden layers of each bank's FC network (then one unit and a sigmoid).
    pub fc_units: Vec<usize>,
    /// Width of the gates' scenario embedding.
    pub gate_embedding_dim: usize,
    pub tower_units: Vec<usize>,
    pub activation: Activation,
    /// The scenario transform (off: the ablation without it).
    pub transform: bool,
}

impl Default for SarNetParams {
    fn default() -> Self {
        Self {
            behaviour_items: "hist_item_id".into(),
            behaviour_scenarios: "hist_domain".into(),
            target_item: "item_id".into(),
            scenario_field: String::new(),
            scenario_dim: 4,
            debias: Vec::new(),
            shared_experts: 2,
            scenario_experts: 1,
            expert_units: vec![32],
            bias_units: vec![8],
            fairness_coefficient: true,
            fc_units: vec![8],
            gate_embedding_dim: 4,
            tower_units: vec![8],
            activation: Activation::Relu,
            transform: true,
        }
    }
}

pub struct SarNet;

fn param_error(key: &str, message: String) -> Error {
    Error::arch_param(SarNet::NAME, key, message)
}

/// The ids of the template's nodes.
pub const BEHAVIOUR: &str = "behaviour";
pub const TRANSFORM: &str = "scenario-transform";
pub const SHARED: &str = "experts-shared";
pub const SPECIFIC: &str = "experts-scenario";

impl Template for SarNet {
    const NAME: &'static str = "sar-net";
    const SUMMARY: &'static str = "SAR-Net (CIKM'21): cross-scenario behaviour attention, scenario transform, shared + per-scenario debias experts, scenario gate";
    type Params = SarNetParams;
    fn side_features(&self, p: &SarNetParams) -> Vec<String> {
        let mut side = vec![p.behaviour_items.clone(), p.behaviour_scenarios.clone()];
        side.extend(p.debias.iter().cloned());
        side
    }
    fn expand(&self, p: &SarNetParams, env: &GraphEnv) -> Result<GraphSpec> {
        Ok(GraphSpec {
            nodes: expand_sar_net(p, env)?,
        })
    }
}

/// Checks the feature names of `p` against the data, naming the key.
fn check_features(p: &SarNetParams, env: &GraphEnv) -> Result<()> {
    let f = &env.features;
    let list = |names: Vec<&str>| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let seqs = list(f.sequences.iter().map(|q| q.name.as_str()).collect());
    for (key, name) in [
        ("behaviour_items", &p.behaviour_items),
        ("behaviour_scenarios", &p.behaviour_scenarios),
    ] {
        if f.sequence(name).is_none() {
            return Err(param_error(
                key,
                format!(
                    "`{key}` = \"{name}\" is no sequence feature of the data (its sequences: {seqs}); \
                 name a behaviour-log sequence column (e.g. `history > 0` with multi-domain-synthetic)"
                ),
            ));
        }
    }
    let sparse = list(f.sparse.iter().map(|s| s.name.as_str()).collect());
    if f.sparse_field(&p.target_item).is_none() {
        return Err(param_error(
            "target_item",
            format!(
                "`target_item` = \"{}\" is no sparse field of the data (its sparse fields: {sparse})",
                p.target_item
            ),
        ));
    }
    if !p.scenario_field.is_empty() && f.sparse_field(&p.scenario_field).is_none() {
        return Err(param_error(
            "scenario_field",
            format!(
                "`scenario_field` = \"{}\" is no sparse field of the data (its sparse fields: {sparse}); \
             set it to \"\" for a scenario table of the model's own",
                p.scenario_field
            ),
        ));
    }
    for name in &p.debias {
        if f.feature_width(name).is_none() {
            return Err(param_error("debias", format!(
                "`debias` names `{name}`, which is no sparse or dense feature of the data (sparse: {sparse}; dense: {})",
                list(f.dense.iter().map(String::as_str).collect())
            )));
        }
        if name == &p.target_item || name == &p.scenario_field {
            return Err(param_error(
                "debias",
                format!(
                    "`debias` names `{name}`, which SAR-Net also reads as the target item or scenario: \
                 debias features never reach the serving path, so it cannot be both"
                ),
            ));
        }
    }
    Ok(())
}

/// The SAR-Net graph for `p` on data described by `env`.
pub fn expand_sar_net(p: &SarNetParams, env: &GraphEnv) -> Result<Vec<NodeSpec>> {
    if env.domains == 0 {
        return Err(Error::GraphWide(
            "architecture `sar-net` is a multi-scenario model: it needs a domain id per row, and this data has \
             no domains (use a source with a domain column, e.g. `multi-domain-synthetic`)"
                .into(),
        ));
    }
    check_features(p, env)?;
    if p.shared_experts == 0 && p.scenario_experts == 0 {
        return Err(param_error(
            "shared_experts",
            "`shared_experts` and `scenario_experts` are both 0: the gate needs at least one expert".into(),
        ));
    }
    let behaviour = BehaviourParams {
        items: p.behaviour_items.clone(),
        scenarios: p.behaviour_scenarios.clone(),
        target: p.target_item.clone(),
        scenario_field: (!p.scenario_field.is_empty()).then(|| p.scenario_field.clone()),
        scenario_dim: p.scenario_dim,
    };
    let mut nodes = vec![NodeSpec::of(BEHAVIOUR, &BehaviourKind, &behaviour).input(INPUT)];
    let mut last = BEHAVIOUR.to_string();
    if p.transform {
        nodes.push(NodeSpec::of(TRANSFORM, &ScenarioTransformKind, &ScenarioTransformParams {}).input(&last));
        last = TRANSFORM.into();
    }
    let experts = |id: &str, count: usize, scenario_specific: bool| {
        let bank = DebiasExpertsParams {
            count,
            units: p.expert_units.clone(),
            activation: p.activation,
            scenario_specific,
            debias: p.debias.clone(),
            bias_units: p.bias_units.clone(),
            fairness_coefficient: p.fairness_coefficient,
            fc_units: p.fc_units.clone(),
        };
        NodeSpec::of(id, &DebiasExpertsKind, &bank).input(&last)
    };
    let mut banks = Vec::new();
    if p.shared_experts > 0 {
        nodes.push(experts(SHARED, p.shared_experts, false));
        banks.push(SHARED);
    }
    if p.scenario_experts > 0 {
        nodes.push(experts(SPECIFIC, p.scenario_experts, true));
        banks.push(SPECIFIC);
    }
    let gate = ScenarioGateParams {
        embedding_dim: p.gate_embedding_dim,
        ..Default::default()
    };
    for t in &env.tasks {
        nodes.push(
            NodeSpec::of(format!("gate-{}", t.name), &ScenarioGateKind, &gate)
                .input(&last)
                .experts(banks.iter().copied()),
        );
    }
    nodes.extend(towers(&env.tasks, &p.tower_units, |t| format!("gate-{}", t.name)));
    Ok(nodes)
}

mtrec_core::register_template!(SarNet);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
