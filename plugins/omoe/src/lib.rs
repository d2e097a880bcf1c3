//! OMoE: MMoE with ONE gate shared by all tasks (the MMoE paper's baseline
//! isolating the effect of per-task gates). Same parameters and defaults as
//! MMoE, whose expansion it reuses.

use mtrec_core::{GraphEnv, GraphSpec, Result, Template};
use mtrec_mmoe::{expand_moe, MoeParams};

pub struct Omoe;

impl Template for Omoe {
    const NAME: &'static str = "omoe";
    const SUMMARY: &'static str =
        "One-gate Mixture-of-Experts (MMoE paper baseline): shared experts, one gate for all tasks";
    type Params = MoeParams;
    fn expand(&self, p: &MoeParams, env: &GraphEnv) -> Result<GraphSpec> {
        Ok(expand_moe(p, env, true))
    }
}

mtrec_core::register_template!(Omoe);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
