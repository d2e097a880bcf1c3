//! MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with
//! Multi-gate Mixture-of-Experts", KDD 2018).
//!
//! `n` experts `f_i` read the input; task k's gate `g_k(x) = softmax(W_gk x)`
//! (bias-free linear map) mixes them, `f^k(x) = sum_i g_k(x)_i f_i(x)`, and
//! task k's tower gives `y_k = h_k(f^k(x))`. No shared bottom under the
//! experts, as in the paper. Defaults are the paper's setup: 8 experts of one
//! 16-unit ReLU layer, towers of one 8-unit layer.

use mtrec_core::registry::{parse_arch_params, to_table};
use mtrec_core::template::towers;
use mtrec_core::{ArchRegistration, Architecture, GraphEnv, GraphSpec, NodeSpec, Result, INPUT};
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

impl Architecture for Mmoe {
    fn name(&self) -> &'static str {
        "mmoe"
    }
    fn summary(&self) -> &'static str {
        "Multi-gate Mixture-of-Experts (KDD'18): shared experts, one softmax gate per task"
    }
    fn defaults(&self) -> toml::Table {
        to_table(&MoeParams::default())
    }
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec> {
        let p: MoeParams = parse_arch_params(self.name(), params)?;
        Ok(expand_moe(&p, env, false))
    }
}

/// One bank of experts over the input, then either one gate per task (MMoE)
/// or one gate shared by all tasks (OMoE), then one tower per task.
pub fn expand_moe(p: &MoeParams, env: &GraphEnv, one_gate: bool) -> GraphSpec {
    let gate = |id: String| {
        NodeSpec::new(id, "softmax-gate")
            .input(INPUT)
            .experts(["experts"])
            .param("bias", p.gate_bias)
    };
    let mut nodes = vec![NodeSpec::new("experts", "mlp-experts")
        .input(INPUT)
        .param("count", p.experts)
        .param("units", &p.expert_units)];
    if one_gate {
        nodes.push(gate("gate".into()));
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "gate".to_string()));
    } else {
        nodes.extend(env.tasks.iter().map(|t| gate(format!("gate-{}", t.name))));
        nodes.extend(towers(&env.tasks, &p.tower_units, |t| format!("gate-{}", t.name)));
    }
    GraphSpec { nodes }
}

inventory::submit!(ArchRegistration(&Mmoe));

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
