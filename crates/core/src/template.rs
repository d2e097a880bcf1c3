//! Helpers for architecture templates (built-in and third-party alike).

use crate::graph::NodeSpec;
use crate::task::TaskInfo;

/// The node id of task `task`'s tower in the built-in templates.
pub fn tower_id(task: &str) -> String {
    format!("tower-{task}")
}

/// One `mlp-tower` per task, task `k` reading `input_of(k)`.
pub fn towers(tasks: &[TaskInfo], units: &[usize], mut input_of: impl FnMut(&TaskInfo) -> String) -> Vec<NodeSpec> {
    tasks
        .iter()
        .map(|t| {
            NodeSpec::new(tower_id(&t.name), "mlp-tower")
                .input(input_of(t))
                .task(&t.name)
                .param("units", units)
        })
        .collect()
}
