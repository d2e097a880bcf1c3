//! MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with
//! Multi-gate Mixture-of-Experts", KDD 2018).
//!
//! `n` experts `f_i` read the input; task k's gate `g_k(x) = softmax(W_gk x)`
//! (bias-free linear map) mixes them, `f^k(x) = sum_i g_k(x)_i f_i(x)`, and
//! task k's tower gives `y_k = h_k(f^k(x))`. No shared bottom under the
//! experts, as in the paper. Defaults are the paper's setup: 8 experts of one
//! 16-unit ReLU layer, towers of one 8-unit layer.

use mtrec_core::components::experts::{MlpExpertsKind, MlpExpertsParams};
use mtrec_core::components::gate::{SoftmaxGateKind, SoftmaxGateParams};
use mtrec_core::protocol::towers;
use mtrec_core::{GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

/// MMoE's parameters (also OMoE's, which differs only in sharing one gate).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoeParams {
    pub experts: usize,
    pub expert_units: Vec<usize>,
    pub tower_units: Vec<usize>,
    pub gate_bias: bool,
}

impl Default for MoeParams {
    fn default() -> Self {
        Self {
            experts: 8,
            expert_units: vec![16],
            tower_units: vec![8],
            gate_bias: false,
        }
    }
}

pub struct Mmoe;

impl Template for Mmoe {
    const NAME: &'static str = "mmoe";
    const SUMMARY: &'static str = "Multi-gate Mixture-of-Experts (KDD'18): shared experts, one softmax gate per task";
    type Params = MoeParams;
    fn expand(&self, p: &MoeParams, env: &GraphEnv) -> Result<GraphSpec> {
        Ok(expand_moe(p, env, false))
    }
}

/// One bank of experts over the input, then either one gate per task (MMoE)
/// or one gate shared by all tasks (OMoE), then one tower per task.
pub fn expand_moe(p: &MoeParams, env: &GraphEnv, one_gate: bool) -> GraphSpec {
    let gate_params = SoftmaxGateParams { bias: p.gate_bias };
    let gate = |id: String| {
        NodeSpec::of(id, &SoftmaxGateKind, &gate_params)
            .input(INPUT)
            .experts(["experts"])
    };
    let experts = MlpExpertsParams {
        count: p.experts,
        units: p.expert_units.clone(),
        ..Default::default()
    };
    let mut nodes = vec![NodeSpec::of("experts", &MlpExpertsKind, &experts).input(INPUT)];
    if one_gate {
        nodes.push(gate("gate".into()));
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "gate".to_string()));
    } else {
        nodes.extend(env.tasks.iter().map(|t| gate(format!("gate-{}", t.name))));
        nodes.extend(towers(&env.tasks, &p.tower_units, |t| format!("gate-{}", t.name)));
    }
    GraphSpec { nodes }
}

mtrec_core::register_template!(Mmoe);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
