//! The core crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the core: bad names, bad graphs, bad
/// parameters, shape errors from candle, and checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A name looked up in a registry (architecture, component kind) is unknown.
    #[error("unknown {what} `{name}`; known: {}", known.join(", "))]
    UnknownName {
        what: &'static str,
        name: String,
        known: Vec<String>,
    },

    /// Two registrations (e.g. two linked crates) claim the same name.
    #[error("{what} `{name}` is registered twice; rename one of the two registrations")]
    DuplicateName { what: &'static str, name: String },

    /// A graph that cannot be built: the node (and where it came from) and why.
    #[error("graph node `{node}`{}: {message}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Graph {
        node: String,
        origin: Option<String>,
        message: String,
    },

    /// A graph-wide problem not tied to one node (e.g. a task without a tower).
    #[error("graph: {0}")]
    GraphWide(String),

    /// Parameters of an architecture or component that do not parse.
    #[error("parameters of {what}: {message}")]
    Params { what: String, message: String },

    /// Inputs handed to a model that do not match what it was built for.
    #[error("model input: {0}")]
    Input(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint that does not match the model it is loaded into.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn graph(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Graph {
            node: node.into(),
            origin: None,
            message: message.into(),
        }
    }
}
