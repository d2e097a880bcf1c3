//! Shared-Bottom: `y_k = h_k(f(x))`, one shared MLP `f` under one tower `h_k`
//! per task. Defaults follow the MMoE paper's baseline: one 113-unit bottom
//! layer (about the parameter count of 8 experts x 16 units), towers of 8.

use mtrec_core::components::mlp::{MlpKind, MlpParams};
use mtrec_core::protocol::towers;
use mtrec_core::{GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
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

impl Template for SharedBottom {
    const NAME: &'static str = "shared-bottom";
    const SUMMARY: &'static str =
        "Shared-Bottom: one shared MLP under one tower per task (the classic hard-sharing baseline)";
    type Params = BottomParams;
    fn expand(&self, p: &BottomParams, env: &GraphEnv) -> Result<GraphSpec> {
        let bottom = MlpParams {
            units: p.bottom_units.clone(),
            ..Default::default()
        };
        let mut nodes = vec![NodeSpec::of("bottom", &MlpKind, &bottom).input(INPUT)];
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "bottom".to_string()));
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(SharedBottom);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
