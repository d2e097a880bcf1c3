//! Single-task baseline: one independent network per task, sharing nothing.
//! It is the reference every multi-task gain is measured against
//! ("MTL gain" = metric(model) - metric(single-task)). Its per-task network
//! has Shared-Bottom's shape (bottom 113, tower 8 by default), so the two
//! differ only in sharing.

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
