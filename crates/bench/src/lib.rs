//! The benchmark library behind `mtrec-bench` (`cargo xtask bench`): the
//! synthetic data and its file format ([`data`]), the fixed workloads built
//! through the registry ([`workload`]) and one workload's measurement on the
//! real training and prediction code paths ([`measure`]).

pub mod data;
pub mod measure;
pub mod workload;

use std::path::{Path, PathBuf};

/// Any failure of the benchmark, as a message.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    pub fn msg(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

macro_rules! from_error {
    ($($t:ty),*) => {$(
        impl From<$t> for BenchError {
            fn from(e: $t) -> Self {
                Self(e.to_string())
            }
        }
    )*};
}
from_error!(
    mtrec_core::Error,
    mtrec_data::DataError,
    mtrec_train::TrainError,
    candle_core::Error,
    std::io::Error,
    serde_json::Error
);

/// The workspace root (target/ and bench/ live there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
