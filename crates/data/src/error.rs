//! The data crate's one error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong when building, splitting, batching or
/// generating data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An error from the core (e.g. domain ids rejected by `Domains::new`).
    #[error(transparent)]
    Core(#[from] mtrec_core::Error),

    /// A tensor could not be built (shape or device error from candle).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A generator, split or batching setting outside its allowed range.
    #[error("invalid setting `{setting}` = {value}: allowed: {allowed}")]
    InvalidSetting {
        setting: String,
        value: String,
        allowed: String,
    },

    /// Columns that do not fit together or hold values they must not.
    #[error("invalid dataset: {0}")]
    InvalidDataset(String),

    /// A row index past the end of the dataset.
    #[error("row index {row} is out of range: the dataset has {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },

    /// A tabular data description (`[data]` of a CSV/Parquet source, or a
    /// `[[tasks]]` entry) that cannot work, whatever the files hold.
    #[error("invalid data schema: {0}")]
    Schema(String),
    /// Readers of one data set (a data-parallel run's ranks) could not
    /// exchange what they read (`FitCounts`).
    #[error("exchanging the fitted counts between ranks: {0}")]
    Exchange(String),

    /// A `[[tasks]]` name that cannot name the task's tower node and
    /// parameters (empty, or with a character other than an ASCII letter, a
    /// digit, `_` or `-`).
    #[error(
        "task name `{name}` may hold only ASCII letters, digits, `_` and `-` (it names the task's tower node \
         `tower-<name>` and its parameters) and must not be empty; rename it, e.g. `{suggestion}`"
    )]
    TaskName { name: String, suggestion: String },

    /// Bad content in an input file, located: the file, the line (CSV, 1-based,
    /// the header counted) or row (Parquet, 1-based), and the column.
    #[error("{}", input_message(file, place, column.as_deref(), message))]
    Input {
        file: PathBuf,
        place: Place,
        column: Option<String>,
        message: String,
    },

    /// A file that could not be opened or read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where in an input file a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A 1-based line of a text file (the header is line 1).
    Line(u64),
    /// A 1-based row of a Parquet file.
    Row(u64),
    /// The file as a whole (its column list, its metadata).
    File,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Row(n) => write!(f, "row {n}"),
            Place::File => Ok(()),
        }
    }
}

fn input_message(file: &Path, place: &Place, column: Option<&str>, message: &str) -> String {
    let mut out = file.display().to_string();
    if *place != Place::File {
        out.push_str(&format!(": {place}"));
    }
    if let Some(c) = column {
        let sep = if *place == Place::File { ": " } else { ", " };
        out.push_str(&format!("{sep}column `{c}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

impl DataError {
    pub(crate) fn setting(
        setting: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        DataError::InvalidSetting {
            setting: setting.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    pub(crate) fn input(file: &Path, place: Place, column: Option<&str>, message: impl Into<String>) -> Self {
        DataError::Input {
            file: file.to_path_buf(),
            place,
            column: column.map(str::to_string),
            message: message.into(),
        }
    }

    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    pub(crate) fn schema(message: impl Into<String>) -> Self {
        DataError::Schema(message.into())
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
