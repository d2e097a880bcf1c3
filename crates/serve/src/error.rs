//! The serving crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong loading, serving or load-testing a model.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A client's request that cannot be scored: answered with `status`
    /// (400, 404, 413, 503...) and a JSON error naming the instance (its
    /// 0-based index in `instances`) and the column when there is one.
    #[error("{}", request_message(*instance, column.as_deref(), message))]
    Request {
        status: u16,
        instance: Option<usize>,
        column: Option<String>,
        message: String,
    },

    /// A run folder that cannot be served.
    #[error("cannot serve model `{name}` from {}: {message}", dir.display())]
    Load {
        name: String,
        dir: PathBuf,
        message: String,
    },

    /// Flags that do not fit together or are out of range.
    #[error("{0}")]
    Usage(String),

    /// A socket, runtime or file operation that failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Encoding rows or reading a data file (not a client's mistake).
    #[error(transparent)]
    Data(#[from] mtrec_data::DataError),

    /// The model's forward pass.
    #[error(transparent)]
    Core(#[from] mtrec_core::Error),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A batch that could not be scored (answered 500 to its requests).
    #[error("scoring failed: {0}")]
    Scoring(String),

    /// The load generator's HTTP client.
    #[error("load generator: {0}")]
    Client(String),
}

fn request_message(instance: Option<usize>, column: Option<&str>, message: &str) -> String {
    match (instance, column) {
        (Some(i), Some(c)) => format!("instance {i}, column `{c}`: {message}"),
        (Some(i), None) => format!("instance {i}: {message}"),
        (None, Some(c)) => format!("column `{c}`: {message}"),
        (None, None) => message.to_string(),
    }
}

impl ServeError {
    /// A 400 answer about the request as a whole.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ServeError::Request {
            status: 400,
            instance: None,
            column: None,
            message: message.into(),
        }
    }

    /// A 400 answer about one instance (and column).
    pub(crate) fn bad_instance(instance: usize, column: Option<&str>, message: impl Into<String>) -> Self {
        ServeError::Request {
            status: 400,
            instance: Some(instance),
            column: column.map(str::to_string),
            message: message.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ServeError::Io {
            what: what.into(),
            source,
        }
    }

    /// The HTTP status this error answers with: the request's own, else 500.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::Request { status, .. } => *status,
            _ => 500,
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
