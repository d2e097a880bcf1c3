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

    /// Parameters of an architecture that do not parse: whose, and the
    /// failing key's path (which the runner turns into a file line).
    #[error("parameters of {owner}: {error}")]
    Params {
        owner: String,
        error: Box<crate::protocol::ParamError>,
    },

    /// Parameters of a graph node that do not parse: the node, where it
    /// was written, its kind, and the failing key's path.
    #[error("graph node `{node}`{}: parameters of `{kind}`: {error}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    NodeParams {
        node: String,
        origin: Option<String>,
        kind: String,
        error: Box<crate::protocol::ParamError>,
    },

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
    /// A template's parameter `key` that parses but does not fit (`levels
    /// = 0`): located like a parse error.
    pub fn arch_param(arch: &str, key: &str, message: impl Into<String>) -> Self {
        Error::Params {
            owner: format!("architecture `{arch}` ([model])"),
            error: Box::new(crate::protocol::ParamError {
                path: crate::protocol::KeyPath::default().key(key),
                message: message.into(),
                example: None,
            }),
        }
    }

    pub fn graph(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Graph {
            node: node.into(),
            origin: None,
            message: message.into(),
        }
    }
}
