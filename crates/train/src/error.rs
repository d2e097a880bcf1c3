//! The training crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while optimising, clipping, checkpointing the
/// optimizer or computing metrics.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Core(#[from] mtrec_core::Error),

    /// A file that could not be read, written, synced or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Optimizer state that does not match the model it is loaded for:
    /// a missing or extra key, a wrong shape, a bad step count.
    #[error("optimizer checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// Invalid input to a metric: length mismatch, no rows, one class only
    /// for AUC, NaN values, labels out of range.
    #[error("metric: {0}")]
    Metric(String),

    /// An invalid argument: optimizer hyper-parameters, duplicate variable
    /// names, a gradient whose shape does not match its variable, a bad
    /// clipping threshold.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// A training setting no model can train with (`[train] key: why`).
    #[error("{0}")]
    Config(String),

    /// A task's loss became NaN or infinite: the learning rate is likely too
    /// high for the data's scale.
    #[error("training diverged in epoch {epoch}: the loss of task `{task}` is not finite; lower [train] lr or set [train] clip_norm")]
    Diverged { epoch: usize, task: String },

    /// A failed exchange between the ranks of a distributed run, or ranks
    /// that disagree (config, weights).
    #[error("distributed training: {0}")]
    Distributed(String),

    #[error(transparent)]
    Data(#[from] mtrec_data::DataError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}
