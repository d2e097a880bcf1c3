//! OMoE: MMoE with ONE gate shared by all tasks (the MMoE paper's baseline
//! isolating the effect of per-task gates). Same parameters and defaults as
//! MMoE, whose expansion it reuses.

use mtrec_core::registry::{parse_arch_params, to_table};
use mtrec_core::{ArchRegistration, Architecture, GraphEnv, GraphSpec, Result};
use mtrec_mmoe::{expand_moe, MoeParams};

pub struct Omoe;

impl Architecture for Omoe {
    fn name(&self) -> &'static str {
        "omoe"
    }
    fn summary(&self) -> &'static str {
        "One-gate Mixture-of-Experts (MMoE paper baseline): shared experts, one gate for all tasks"
    }
    fn defaults(&self) -> toml::Table {
        to_table(&MoeParams::default())
    }
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec> {
        let p: MoeParams = parse_arch_params(self.name(), params)?;
        Ok(expand_moe(&p, env, true))
    }
}

inventory::submit!(ArchRegistration(&Omoe));

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
