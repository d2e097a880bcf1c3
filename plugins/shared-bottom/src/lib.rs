//! Shared-Bottom: `y_k = h_k(f(x))`, one shared MLP `f` under one tower `h_k`
//! per task. Defaults follow the MMoE paper's baseline: one 113-unit bottom
//! layer (about the parameter count of 8 experts x 16 units), towers of 8.

use mtrec_core::registry::{parse_arch_params, to_table};
use mtrec_core::template::towers;
use mtrec_core::{ArchRegistration, Architecture, GraphEnv, GraphSpec, NodeSpec, Result, INPUT};
use serde::{Deserialize, Serialize};

/// A bottom MLP and towers: Shared-Bottom's parameters, and the single-task
/// baseline's (one such network per task).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BottomParams {
    pub bottom_units: Vec<usize>,
    pub tower_units: Vec<usize>,
}

impl Default for BottomParams {
    fn default() -> Self {
        Self {
            bottom_units: vec![113],
            tower_units: vec![8],
        }
    }
}

pub struct SharedBottom;

impl Architecture for SharedBottom {
    fn name(&self) -> &'static str {
        "shared-bottom"
    }
    fn summary(&self) -> &'static str {
        "Shared-Bottom: one shared MLP under one tower per task (the classic hard-sharing baseline)"
    }
    fn defaults(&self) -> toml::Table {
        to_table(&BottomParams::default())
    }
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec> {
        let p: BottomParams = parse_arch_params(self.name(), params)?;
        let mut nodes = vec![NodeSpec::new("bottom", "mlp")
            .input(INPUT)
            .param("units", &p.bottom_units)];
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "bottom".to_string()));
        Ok(GraphSpec { nodes })
    }
}

inventory::submit!(ArchRegistration(&SharedBottom));

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
