//! The runner's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Core(#[from] mtrec_core::Error),
    #[error(transparent)]
    Data(#[from] mtrec_data::DataError),
    #[error(transparent)]
    Train(#[from] mtrec_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A config that does not parse or does not fit: the file, the place
    /// (line or key) and what to change.
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}
