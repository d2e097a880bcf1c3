//! Single-task baseline: one independent network per task, sharing nothing.
//! It is the reference every multi-task gain is measured against
//! ("MTL gain" = metric(model) - metric(single-task)). Its per-task network
//! has Shared-Bottom's shape (bottom 113, tower 8 by default), so the two
//! differ only in sharing.

use mtrec_core::registry::{parse_arch_params, to_table};
use mtrec_core::template::towers;
use mtrec_core::{ArchRegistration, Architecture, GraphEnv, GraphSpec, NodeSpec, Result, INPUT};
use mtrec_shared_bottom::BottomParams;

pub struct SingleTask;

fn bottom_id(task: &str) -> String {
    format!("bottom-{task}")
}

impl Architecture for SingleTask {
    fn name(&self) -> &'static str {
        "single-task"
    }
    fn summary(&self) -> &'static str {
        "Single-task baseline: an independent network per task (the reference for MTL gain)"
    }
    fn defaults(&self) -> toml::Table {
        to_table(&BottomParams::default())
    }
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec> {
        let p: BottomParams = parse_arch_params(self.name(), params)?;
        let mut nodes: Vec<NodeSpec> = env
            .tasks
            .iter()
            .map(|t| {
                NodeSpec::new(bottom_id(&t.name), "mlp")
                    .input(INPUT)
                    .param("units", &p.bottom_units)
            })
            .collect();
        nodes.extend(towers(&env.tasks, &p.tower_units, |t| bottom_id(&t.name)));
        Ok(GraphSpec { nodes })
    }
}

inventory::submit!(ArchRegistration(&SingleTask));

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
