//! The export's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Core(#[from] mtrec_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A node whose component kind has no ONNX form (yet): the node, its
    /// kind, and why.
    #[error("graph node `{node}`: component kind `{kind}` cannot be expressed in ONNX: {reason}")]
    Unsupported { node: String, kind: String, reason: String },
    /// A node's parameters that do not parse into its kind's parameters (the
    /// graph was validated with the same types, so this means a graph that
    /// was not).
    #[error("graph node `{node}` (`{kind}`): {message}")]
    Params {
        node: String,
        kind: String,
        message: String,
    },
    /// A weight the graph needs that the model does not hold.
    #[error("the model has no weight `{0}`")]
    MissingWeight(String),
    /// Two graph inputs or outputs that would carry one name (a task named
    /// like an input).
    #[error("ONNX name `{0}` would name two graph inputs or outputs: rename the task")]
    NameClash(String),
    #[error("cannot encode the ONNX model: {0}")]
    Encode(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ExportError>;
