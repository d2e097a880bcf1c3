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
    #[error(transparent)]
    Export(#[from] mtrec_export::ExportError),
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
    /// A command line that does not fit (a missing or contradictory flag).
    #[error("{0}")]
    Usage(String),
    /// A value that cannot be written as JSON or TOML (a report, a history
    /// line, a resolved config): what, and why.
    #[error("cannot encode {what}: {message}")]
    Encode { what: String, message: String },
    /// A chart that cannot be drawn (plots are feedback: a run's results are
    /// written before them).
    #[error("cannot draw {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    /// A predictions file that cannot be written.
    #[error("cannot write {}: {message}", path.display())]
    WriteCsv { path: PathBuf, message: String },
    /// A folder that does not hold what the command needs of a run folder
    /// (or already holds a run): the folder, what is wrong, what to do.
    #[error("{}: {problem}", dir.display())]
    RunFolder { dir: PathBuf, problem: String },
    /// The data gave no training rows.
    #[error("no training rows: the training split or file is empty")]
    NoTrainingRows,
    /// Another process holds the run folder's lock (`crate::folder`).
    #[error(
        "{} is in use by another run ({holder}); wait for that run to end, or choose another --out \
         (a run folder is written by one run at a time)",
        dir.display()
    )]
    FolderInUse { dir: PathBuf, holder: String },
    /// A weights or checkpoint file that cannot be read as safetensors (cut
    /// short by a full disk, overwritten, copied partly): the file, what is
    /// wrong with it and what to do.
    #[error("{}: damaged ({problem}); {fix}", path.display())]
    DamagedFile {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// No task has a validation metric (one class only in a binary task's
    /// validation rows, no labelled rows): early stopping and the best epoch
    /// would rest on a score of -infinity.
    #[error(
        "{}: no validation metric is defined, so early stopping and the choice of the best epoch would \
         have nothing to go on: {tasks}; give the validation rows both classes of at least one binary task \
         (another [data] split or split_seed, or a larger validation file) or a labelled regression task",
        file.display()
    )]
    NoValidationMetric { file: PathBuf, tasks: String },
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// An [`RunError::Encode`] of `what` (`the report`, `the history`...).
pub(crate) fn encode(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> RunError + '_ {
    move |e| RunError::Encode {
        what: what.to_string(),
        message: e.to_string(),
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}
