//! Single-task baseline: one independent network per task, sharing nothing.
//! It is the reference every multi-task gain is measured against
//! ("MTL gain" = metric(model) - metric(single-task)). Its per-task network
//! has Shared-Bottom's shape (bottom 113, tower 8 by default), so the two
//! differ only in sharing.
//!
//! The template expands one task's network (input, bottom, tower). With
//! K > 1 tasks the runner does not build one graph over all of them (their
//! bottoms would still share the input layer's embedding tables and one best
//! epoch): it trains K one-task runs of the config, each with its own input
//! layer, seed-derived initial weights, early stopping on its own
//! validation metric and best weights, and joins their reports
//! (`mtrec_runner::run::independent`). Its per-task results equal K
//! separate one-task runs bit for bit.

use mtrec_core::components::mlp::{MlpKind, MlpParams};
use mtrec_core::protocol::towers;
use mtrec_core::{GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use mtrec_shared_bottom::BottomParams;

pub struct SingleTask;

fn bottom_id(task: &str) -> String {
    format!("bottom-{task}")
}

impl Template for SingleTask {
    const NAME: &'static str = "single-task";
    const SUMMARY: &'static str = "Single-task baseline: an independent network per task (the reference for MTL gain)";
    type Params = BottomParams;
    fn expand(&self, p: &BottomParams, env: &GraphEnv) -> Result<GraphSpec> {
        let bottom = MlpParams {
            units: p.bottom_units.clone(),
            ..Default::default()
        };
        let mut nodes: Vec<NodeSpec> = env
            .tasks
            .iter()
            .map(|t| NodeSpec::of(bottom_id(&t.name), &MlpKind, &bottom).input(INPUT))
            .collect();
        nodes.extend(towers(&env.tasks, &p.tower_units, |t| bottom_id(&t.name)));
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(SingleTask);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
