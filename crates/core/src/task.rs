//! Tasks as the model sees them: a name and a kind.

use serde::{Deserialize, Serialize};

/// What a task predicts, which fixes its loss and its metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// 0/1 label, sigmoid output, BCE loss; AUC and logloss.
    Binary,
    /// Real label, identity output, MSE loss.
    Regression,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Binary => "binary",
            TaskKind::Regression => "regression",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub kind: TaskKind,
}
