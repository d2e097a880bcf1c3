//! CGC, Customized Gate Control (Tang et al., "Progressive Layered
//! Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for Personalized
//! Recommendations", RecSys 2020): PLE with one extraction layer.
//!
//! Each task k has a bank of `m_k = specific_experts` task-specific experts
//! `E_k`, all tasks share a bank of `m_s = shared_experts` experts `E_s`
//! (MLPs with ReLU, reading the input `x`). Task k's gate is a bias-free
//! linear map and a softmax over the stack of task k's and the shared experts:
//!
//! `w_k(x) = softmax(W_k x)`, `W_k` in `R^{(m_k + m_s) x d}`,
//! `g_k(x) = w_k(x)^T [E_k(x); E_s(x)]`, `y_k = t_k(g_k(x))`.
//!
//! There is no shared gate (PLE has one only below its last layer). Task k
//! never sees task j's specific experts. The expansion is `mtrec-ple`'s
//! [`expand_ple`] with one level; node ids are `l1-experts-<task>`,
//! `l1-experts-shared`, `l1-gate-<task>` and `tower-<task>`.
//!
//! Defaults (PLE's, see `mtrec-ple`): 2 specific and 2 shared experts of one
//! 16-unit layer, towers `[256, 128, 64]` (the paper's towers), no gate bias.

use mtrec_core::{GraphEnv, GraphSpec, Result, Template};
use mtrec_ple::{expand_ple, NextInput, PleParams};
use serde::{Deserialize, Serialize};

/// CGC's parameters: PLE's without `levels` and `next_input`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgcParams {
    /// Task-specific experts per task, `m_k`.
    pub specific_experts: usize,
    /// Shared experts, `m_s`.
    pub shared_experts: usize,
    /// Layer widths of every expert, e.g. `[16]`.
    pub expert_units: Vec<usize>,
    /// Hidden layer widths of every tower.
    pub tower_units: Vec<usize>,
    /// A bias in the gates' linear maps (the paper has none).
    pub gate_bias: bool,
}

impl Default for CgcParams {
    fn default() -> Self {
        let p = PleParams::default();
        Self {
            specific_experts: p.specific_experts,
            shared_experts: p.shared_experts,
            expert_units: p.expert_units,
            tower_units: p.tower_units,
            gate_bias: p.gate_bias,
        }
    }
}

impl From<CgcParams> for PleParams {
    /// CGC is PLE with one extraction layer.
    fn from(c: CgcParams) -> Self {
        PleParams {
            levels: 1,
            specific_experts: c.specific_experts,
            shared_experts: c.shared_experts,
            expert_units: c.expert_units,
            tower_units: c.tower_units,
            gate_bias: c.gate_bias,
            next_input: NextInput::Paper,
        }
    }
}

pub struct Cgc;

impl Template for Cgc {
    const NAME: &'static str = "cgc";
    const SUMMARY: &'static str = "Customized Gate Control (RecSys'20): task-specific and shared experts, one gate per task over its own and the shared experts";
    type Params = CgcParams;
    fn expand(&self, p: &CgcParams, env: &GraphEnv) -> Result<GraphSpec> {
        expand_ple(Self::NAME, &PleParams::from(p.clone()), env)
    }
}

mtrec_core::register_template!(Cgc);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
