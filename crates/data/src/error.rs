//! The data crate's one error type.

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
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
