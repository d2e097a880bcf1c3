//! The distributed crate's one error type.

/// What can go wrong between ranks.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// Ranks that must agree (resolved config, preprocessing, weights) do not.
    #[error("{what} differs between ranks: rank {rank} (of {size}) does not match rank 0; every rank must run the same binary with the same config and data")]
    Mismatch { what: String, rank: usize, size: usize },

    /// A message that does not have the agreed layout (a bug or a rank
    /// running another version).
    #[error("collective exchange: {0}")]
    Protocol(String),

    /// The transport could not be started.
    #[error("cannot start distributed training: {0}")]
    Init(String),
}

pub type Result<T, E = DistributedError> = std::result::Result<T, E>;
