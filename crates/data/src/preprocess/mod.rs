//! The fitted preprocessing of a tabular data set: vocabularies, hash
//! settings, dense statistics, domain names and task rules, fitted on the
//! training rows only, then applied to every file.
//!
//! [`Preprocessor::fit`] reads the training file once; [`Preprocessor::encode_file`]
//! (or [`Preprocessor::encode_chunks`] for files larger than memory) reads a
//! file and returns a [`Dataset`]. The state is plain data with serde
//! (`to_json` / `from_json`, `save` / `load`): a run saves it as
//! `preprocess.json`, and prediction on new files uses the same mapping.
//!
//! Encoding, per column kind:
//! - sparse with a vocabulary: the value's id (`1..`), 0 for a missing,
//!   rare (`count < min_count`) or unseen value; no error;
//! - sparse with `hash_buckets = N`: `1 + FNV-1a-64(value) % N`, 0 for a
//!   missing value. FNV-1a (the `fnv` crate over the value's UTF-8 bytes) is
//!   a fixed algorithm: the same ids on every run, machine and version;
//! - dense: missing values (and `NaN`) become the field's `fill` (default:
//!   the training mean of the raw values), then the scaling is applied;
//!   text that is not a number is an error;
//! - sequence: tokens mapped like a sparse value (its own vocabulary or the
//!   shared field's), truncated to `max_len`, padded with 0;
//! - domain: the index of the value in the sorted training domain names;
//!   a missing or unseen domain is an error (domains have no OOV id);
//! - group (GAUC): `FNV-1a-64(value)`, no vocabulary (a user unseen in
//!   training is still its own group); a missing value is an error. Read
//!   (and required) only with the labels ([`Labels::Required`]);
//! - weight: the number as is, finite and >= 0, else an error naming file,
//!   row and column; read only with the labels;
//! - tasks: see [`TaskSpec`].

use std::path::Path;

use mtrec_core::{FeatureSpec, SequenceFeature, SparseFeature, TaskInfo};
use serde::{Deserialize, Serialize};

use crate::read::ReadOptions;
use crate::schema::{Pooling, Scaling, TaskSpec};

/// The version of the saved form; [`Preprocessor::from_json`] rejects others.
pub const FORMAT_VERSION: u32 = 1;

/// How often (in rows) a progress callback is called, besides at the end of
/// each pass.
pub const PROGRESS_EVERY: u64 = 16_384;

/// Which reading pass a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Counting the rows of a single file before splitting it.
    Count,
    /// Fitting vocabularies and statistics on the training rows.
    Fit,
    /// Encoding rows into a dataset.
    Encode,
}

/// A progress report: `rows` rows of `file` read so far in this pass, of
/// `total` when known (Parquet metadata, or an earlier count).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub pass: Pass,
    pub file: &'a Path,
    pub rows: u64,
    pub total: Option<u64>,
}

/// An optional progress callback (the runner drives a progress bar with it).
pub type ProgressFn<'a> = Option<&'a mut dyn FnMut(&Progress<'_>)>;

/// Whether the files must hold the tasks' label (and mask) columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels {
    /// Every label and mask column must be there (training, evaluation).
    Required,
    /// A task whose label or mask column is absent gets mask 0 on every row
    /// (prediction on unlabelled files).
    Optional,
}

mod chunks;
mod encode;
mod fit;
mod persist;
mod rules;
mod vocab;
mod warm;

use chunks::PreRef;
pub use chunks::{EncodeChunks, RowFilter};
pub(crate) use encode::Reporter;
use encode::{Binding, Builder};
pub use fit::{FitCounts, MergeCounts};
use rules::{parse_number, Cond};
pub use vocab::{stable_hash, Encoding, Vocab};
pub use warm::Fitting;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedSparse {
    pub name: String,
    pub dim: usize,
    pub encoding: Encoding,
}

/// A dense field's fill value and training statistics (of the raw values
/// present in the training rows).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedDense {
    pub name: String,
    pub scaling: Scaling,
    /// The raw value a missing one becomes (before scaling).
    pub fill: f64,
    /// Present (non-missing) training values.
    pub count: u64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl FittedDense {
    /// The scaled value of a raw one, or why it has none (a negative value
    /// under `log`; the caller locates it).
    pub fn scale(&self, x: f64) -> std::result::Result<f64, String> {
        Ok(match self.scaling {
            Scaling::None => x,
            Scaling::Log if x < 0.0 => {
                return Err(format!(
                    "{x} is negative, and `scaling = \"log\"` is ln(1 + x), for x >= 0: use \
                     `scaling = \"signed-log\"` (sign(x) * ln(1 + |x|)) for a column with negative values, \
                     or another scaling"
                ))
            }
            Scaling::Log => x.ln_1p(),
            Scaling::SignedLog => x.signum() * x.abs().ln_1p(),
            Scaling::Standard => {
                if self.std > 0.0 {
                    (x - self.mean) / self.std
                } else {
                    x - self.mean
                }
            }
            Scaling::Minmax => {
                let range = self.max - self.min;
                if range > 0.0 {
                    (x - self.min) / range
                } else {
                    x - self.min
                }
            }
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedSequence {
    pub name: String,
    pub separator: String,
    pub max_len: usize,
    pub pooling: Pooling,
    /// Embedding width (the shared field's when `share_with` is set).
    pub dim: usize,
    pub share_with: Option<String>,
    /// The sequence's own encoding; `None` when it shares a sparse field's.
    pub encoding: Option<Encoding>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedDomain {
    pub column: String,
    /// Sorted; a domain's id is its index here.
    pub names: Vec<String>,
}

/// The fitted preprocessing state. See the module documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocessor {
    pub version: u32,
    pub read: ReadOptions,
    pub sparse: Vec<FittedSparse>,
    pub dense: Vec<FittedDense>,
    pub sequences: Vec<FittedSequence>,
    pub domain: Option<FittedDomain>,
    /// The group column (GAUC), read as text and hashed (`stable_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The per-row loss weight column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    pub tasks: Vec<TaskSpec>,
    pub ignore: Vec<String>,
    pub ignore_rest: bool,
    /// Rows the state was fitted on.
    pub train_rows: u64,
}

impl Preprocessor {
    /// The tasks as the model sees them.
    pub fn task_infos(&self) -> Vec<TaskInfo> {
        self.tasks
            .iter()
            .map(|t| TaskInfo {
                name: t.name.clone(),
                kind: t.kind,
            })
            .collect()
    }

    /// The same preprocessing for task `task` alone: what a one-task config
    /// of that task fits, given the other tasks' label and mask columns in
    /// `ignore` (a file holding them still binds: they become unused
    /// columns). `None` for a task index out of range.
    pub fn only_task(&self, task: usize) -> Option<Preprocessor> {
        let kept = self.tasks.get(task)?.clone();
        let mut ignore = self.ignore.clone();
        for t in self.tasks.iter().filter(|t| t.name != kept.name) {
            for column in std::iter::once(&t.label.column).chain(t.mask.as_ref().map(|m| &m.column)) {
                let used = kept.label.column == *column || kept.mask.as_ref().is_some_and(|m| m.column == *column);
                if !used && !ignore.contains(column) {
                    ignore.push(column.clone());
                }
            }
        }
        Some(Preprocessor {
            tasks: vec![kept],
            ignore,
            ..self.clone()
        })
    }

    /// Each task's loss weight, in task order.
    pub fn task_weights(&self) -> Vec<f64> {
        self.tasks.iter().map(|t| t.weight).collect()
    }

    /// The model input the encoded datasets imply: the sparse fields with
    /// their vocabulary sizes and embedding widths, then the dense names.
    /// (Sequences are not part of it: the model input has no slot for them yet.)
    pub fn features(&self) -> FeatureSpec {
        FeatureSpec {
            sparse: self
                .sparse
                .iter()
                .map(|f| SparseFeature {
                    name: f.name.clone(),
                    vocab: f.encoding.size(),
                    dim: f.dim,
                })
                .collect(),
            dense: self.dense.iter().map(|f| f.name.clone()).collect(),
            sequences: self
                .sequences
                .iter()
                .map(|q| SequenceFeature {
                    name: q.name.clone(),
                    max_len: q.max_len,
                    vocab: self.sequence_vocab(q),
                    dim: q.dim,
                    pooling: q.pooling,
                    share_with: q.share_with.clone(),
                })
                .collect(),
            ..FeatureSpec::default()
        }
    }
}
