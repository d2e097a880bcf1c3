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
//! - tasks: see [`TaskSpec`].

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use csv::StringRecord;
use fnv::{FnvHashMap, FnvHasher};
use mtrec_core::{FeatureSpec, SequenceFeature, SparseFeature, TaskInfo, TaskKind};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, DenseColumns, DomainColumn, SequenceColumn, SparseColumns};
use crate::error::{DataError, Place, Result};
use crate::read::{self, ReadOptions, RowSource};
use crate::schema::{Pooling, Rule, Scaling, TabularSchema, TaskSpec};
use crate::stream::{HashSplit, Part};

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

/// Values kept for a field, in id order (`values[i]` has id `i + 1`), with
/// their training counts. Id 0 is out-of-vocabulary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "VocabFile", into = "VocabFile")]
pub struct Vocab {
    min_count: u64,
    /// Training occurrences that map to 0: rarer values and missing ones.
    oov_count: u64,
    values: Vec<String>,
    counts: Vec<u64>,
    /// FNV-hashed: short keys, no untrusted-input flooding concern here,
    /// and SipHash showed in profiles.
    index: FnvHashMap<String, u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    min_count: u64,
    oov_count: u64,
    values: Vec<String>,
    counts: Vec<u64>,
}

impl TryFrom<VocabFile> for Vocab {
    type Error = String;
    fn try_from(f: VocabFile) -> std::result::Result<Self, String> {
        if f.values.len() != f.counts.len() {
            return Err(format!(
                "vocabulary has {} values but {} counts",
                f.values.len(),
                f.counts.len()
            ));
        }
        if f.values.len() >= u32::MAX as usize {
            return Err("vocabulary too large for u32 ids".into());
        }
        let mut index = FnvHashMap::with_capacity_and_hasher(f.values.len(), Default::default());
        for (i, v) in f.values.iter().enumerate() {
            if index.insert(v.clone(), i as u32 + 1).is_some() {
                return Err(format!("vocabulary lists `{v}` twice"));
            }
        }
        Ok(Vocab {
            min_count: f.min_count,
            oov_count: f.oov_count,
            values: f.values,
            counts: f.counts,
            index,
        })
    }
}

impl From<Vocab> for VocabFile {
    fn from(v: Vocab) -> Self {
        VocabFile {
            min_count: v.min_count,
            oov_count: v.oov_count,
            values: v.values,
            counts: v.counts,
        }
    }
}

impl Vocab {
    /// Keeps the values counted at least `min_count` times, most frequent
    /// first (ties by value), so ids are deterministic.
    fn fit(counts: FnvHashMap<String, u64>, missing: u64, min_count: u64) -> Result<Self> {
        let mut oov_count = missing;
        let mut kept: Vec<(String, u64)> = Vec::new();
        for (v, c) in counts {
            if c >= min_count {
                kept.push((v, c));
            } else {
                oov_count += c;
            }
        }
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (values, counts): (Vec<String>, Vec<u64>) = kept.into_iter().unzip();
        Vocab::try_from(VocabFile {
            min_count,
            oov_count,
            values,
            counts,
        })
        .map_err(DataError::schema)
    }

    /// The id of `value`: `1..` when kept, else 0.
    pub fn id(&self, value: &str) -> u32 {
        self.index.get(value).copied().unwrap_or(0)
    }

    /// Number of ids, OOV included: `values().len() + 1`.
    pub fn size(&self) -> usize {
        self.values.len() + 1
    }

    /// Kept values in id order (`values()[i]` has id `i + 1`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Training count of each kept value, in id order.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn min_count(&self) -> u64 {
        self.min_count
    }

    /// Training occurrences mapped to 0 (rare and missing values).
    pub fn oov_count(&self) -> u64 {
        self.oov_count
    }
}

/// FNV-1a 64 of the value's UTF-8 bytes.
pub fn stable_hash(value: &str) -> u64 {
    let mut h = FnvHasher::default();
    h.write(value.as_bytes());
    h.finish()
}

/// How a categorical value becomes an id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoding {
    /// Training values seen at least `min_count` times: ids `1..`; else 0.
    Vocab { vocab: Vocab },
    /// `1 + stable_hash(value) % buckets`; 0 only for a missing value.
    Hash { buckets: u32 },
}

impl Encoding {
    /// The id of a present (not missing) value.
    pub fn id(&self, value: &str) -> u32 {
        match self {
            Encoding::Vocab { vocab } => vocab.id(value),
            Encoding::Hash { buckets } => 1 + (stable_hash(value) % u64::from(*buckets)) as u32,
        }
    }

    /// Number of ids, 0 included.
    pub fn size(&self) -> usize {
        match self {
            Encoding::Vocab { vocab } => vocab.size(),
            Encoding::Hash { buckets } => *buckets as usize + 1,
        }
    }
}

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
    pub tasks: Vec<TaskSpec>,
    pub ignore: Vec<String>,
    pub ignore_rest: bool,
    /// Rows the state was fitted on.
    pub train_rows: u64,
}

/// Calls the user's callback, if any.
pub(crate) struct Reporter<'a> {
    f: Option<&'a mut dyn FnMut(&Progress<'_>)>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(f: ProgressFn<'a>) -> Self {
        Self { f }
    }

    pub(crate) fn report(&mut self, pass: Pass, file: &Path, rows: u64, total: Option<u64>) {
        if let Some(f) = self.f.as_mut() {
            f(&Progress {
                pass,
                file,
                rows,
                total,
            });
        }
    }
}

/// A file's column positions for the preprocessor's fields.
struct Binding {
    width: usize,
    /// Values are read trimmed.
    trim: bool,
    columns: Vec<String>,
    sparse: Vec<usize>,
    dense: Vec<usize>,
    sequences: Vec<usize>,
    domain: Option<usize>,
    /// Per task; `None` when absent and labels are optional.
    labels: Vec<Option<usize>>,
    masks: Vec<Option<Option<usize>>>,
}

impl Binding {
    /// The text of field `i` (trimmed when the reader says so).
    fn value<'r>(&self, record: &'r StringRecord, i: usize) -> &'r str {
        let v = record.get(i).unwrap_or("");
        if self.trim {
            v.trim()
        } else {
            v
        }
    }
}

/// A task's rule, ready to apply.
enum Cond {
    /// The value must be 0 or 1.
    Flag,
    Equals(String, Option<f64>),
    OneOf(Vec<(String, Option<f64>)>),
    Above(f64),
}

fn as_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

impl Cond {
    fn of(rule: &Rule) -> Cond {
        if let Some(v) = &rule.equals {
            Cond::Equals(v.0.clone(), as_number(&v.0))
        } else if let Some(vs) = &rule.one_of {
            Cond::OneOf(vs.iter().map(|v| (v.0.clone(), as_number(&v.0))).collect())
        } else if let Some(a) = rule.above {
            Cond::Above(a)
        } else {
            Cond::Flag
        }
    }

    fn matches(expected: &(String, Option<f64>), value: &str) -> bool {
        expected.0 == value || matches!((expected.1, as_number(value)), (Some(a), Some(b)) if a == b)
    }

    /// Whether the rule holds for a present value; an error message when
    /// the value cannot be judged.
    fn holds(&self, value: &str) -> std::result::Result<bool, String> {
        match self {
            Cond::Flag => match value.trim() {
                "true" => Ok(true),
                "false" => Ok(false),
                v => match as_number(v) {
                    Some(1.0) => Ok(true),
                    Some(0.0) => Ok(false),
                    _ => Err(format!(
                        "`{value}` is not 0 or 1 (with no rule the column must hold 0/1; give the rule \
                         `equals`, `one_of` or `above` to derive it)"
                    )),
                },
            },
            Cond::Equals(s, n) => Ok(Cond::matches(&(s.clone(), *n), value)),
            Cond::OneOf(list) => Ok(list.iter().any(|e| Cond::matches(e, value))),
            Cond::Above(a) => match parse_number(value) {
                Ok(x) => Ok(x > *a),
                Err(m) => Err(m),
            },
        }
    }
}

/// A number, or an error message naming the text.
fn parse_number(value: &str) -> std::result::Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(x) if x.is_nan() => Err(format!("`{value}` is not a number")),
        Ok(_) => Err(format!("`{value}` is not a finite number")),
        Err(_) => Err(format!("cannot read `{value}` as a number")),
    }
}

/// Welford's running mean and variance, with min and max.
#[derive(Default)]
struct Stats {
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn add(&mut self, x: f64) {
        if self.n == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
}

/// Counts of a categorical field's training values.
#[derive(Default)]
struct Counts {
    counts: FnvHashMap<String, u64>,
    missing: u64,
}

impl Counts {
    fn add(&mut self, value: &str) {
        match self.counts.get_mut(value) {
            Some(c) => *c += 1,
            None => {
                self.counts.insert(value.to_string(), 1);
            }
        }
    }
}

/// The columns of a dataset being built.
struct Builder {
    rows: usize,
    sparse: Vec<u32>,
    dense: Vec<f32>,
    labels: Vec<f32>,
    masks: Vec<f32>,
    domains: Vec<u32>,
    seq_ids: Vec<Vec<u32>>,
    seq_lengths: Vec<Vec<u32>>,
}

impl Builder {
    fn new(pre: &Preprocessor) -> Self {
        Self {
            rows: 0,
            sparse: Vec::new(),
            dense: Vec::new(),
            labels: Vec::new(),
            masks: Vec::new(),
            domains: Vec::new(),
            seq_ids: vec![Vec::new(); pre.sequences.len()],
            seq_lengths: vec![Vec::new(); pre.sequences.len()],
        }
    }

    fn finish(self, pre: &Preprocessor) -> Result<Dataset> {
        let sparse = (!pre.sparse.is_empty()).then(|| SparseColumns {
            fields: pre.sparse.iter().map(|f| f.name.clone()).collect(),
            vocab: pre.sparse.iter().map(|f| f.encoding.size()).collect(),
            ids: self.sparse,
        });
        let dense = (!pre.dense.is_empty()).then(|| DenseColumns {
            names: pre.dense.iter().map(|f| f.name.clone()).collect(),
            values: self.dense,
        });
        let domains = pre.domain.as_ref().map(|d| DomainColumn {
            names: d.names.clone(),
            ids: self.domains,
        });
        let sequences = pre
            .sequences
            .iter()
            .zip(self.seq_ids.into_iter().zip(self.seq_lengths))
            .map(|(q, (ids, lengths))| SequenceColumn {
                name: q.name.clone(),
                max_len: q.max_len,
                ids,
                lengths,
                vocab: pre.sequence_vocab(q),
                share_with: q.share_with.clone(),
            })
            .collect();
        Dataset::new(pre.task_infos(), sparse, dense, self.labels, self.masks, domains)?.with_sequences(sequences)
    }
}

/// Lists names for a message, at most 60 of them.
fn name_list(names: &[String]) -> String {
    let mut out: Vec<String> = names.iter().take(60).map(|n| format!("`{n}`")).collect();
    if names.len() > 60 {
        out.push(format!("... ({} in all)", names.len()));
    }
    out.join(", ")
}

impl Preprocessor {
    /// The unfitted state the schema describes (empty vocabularies and
    /// statistics), after [`TabularSchema::check`].
    fn plan(schema: &TabularSchema, tasks: &[TaskSpec]) -> Result<Self> {
        schema.check(tasks)?;
        let empty = |min_count: Option<u64>, buckets: Option<u32>| match buckets {
            Some(buckets) => Encoding::Hash { buckets },
            None => Encoding::Vocab {
                vocab: Vocab {
                    min_count: min_count.unwrap_or(schema.defaults.min_count),
                    oov_count: 0,
                    values: Vec::new(),
                    counts: Vec::new(),
                    index: FnvHashMap::default(),
                },
            },
        };
        let sparse: Vec<FittedSparse> = schema
            .sparse
            .iter()
            .map(|f| FittedSparse {
                name: f.name.clone(),
                dim: schema.dim_of(f),
                encoding: empty(f.min_count, f.hash_buckets),
            })
            .collect();
        let sequences = schema
            .sequence
            .iter()
            .map(|f| {
                let shared = f.share_with.as_ref().and_then(|s| sparse.iter().find(|p| &p.name == s));
                FittedSequence {
                    name: f.name.clone(),
                    separator: f.separator.clone(),
                    max_len: f.max_len,
                    pooling: f.pooling,
                    dim: shared.map_or(f.dim.unwrap_or(schema.defaults.embedding_dim), |p| p.dim),
                    share_with: f.share_with.clone(),
                    encoding: shared.is_none().then(|| empty(f.min_count, f.hash_buckets)),
                }
            })
            .collect();
        Ok(Self {
            version: FORMAT_VERSION,
            read: ReadOptions::of(schema),
            sparse,
            dense: schema
                .dense
                .iter()
                .map(|f| FittedDense {
                    name: f.name.clone(),
                    scaling: f.scaling.unwrap_or(schema.defaults.scaling),
                    fill: f.fill.unwrap_or(0.0),
                    count: 0,
                    mean: 0.0,
                    std: 0.0,
                    min: 0.0,
                    max: 0.0,
                })
                .collect(),
            sequences,
            domain: schema.domain.as_ref().map(|c| FittedDomain {
                column: c.clone(),
                names: Vec::new(),
            }),
            tasks: tasks.to_vec(),
            ignore: schema.ignore.clone(),
            ignore_rest: schema.ignore_rest,
            train_rows: 0,
        })
    }

    /// Fits the state on every row of the training file `train`.
    pub fn fit(schema: &TabularSchema, tasks: &[TaskSpec], train: &Path, progress: ProgressFn<'_>) -> Result<Self> {
        let mut reporter = Reporter::new(progress);
        Self::fit_selected(schema, tasks, train, None, &mut reporter)
    }

    /// Fits on the rows `i` (0-based, in file order) of `file` with
    /// `select(i)` (all rows when `None`).
    pub(crate) fn fit_selected(
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        file: &Path,
        select: Option<&dyn Fn(u64) -> bool>,
        reporter: &mut Reporter<'_>,
    ) -> Result<Self> {
        let mut pre = Self::plan(schema, tasks)?;
        let mut src = read::open(file, &pre.read)?;
        let bind = pre.bind(src.as_ref(), Labels::Required)?;
        let total = src.known_rows();

        let mut sparse_counts: Vec<Counts> = pre.sparse.iter().map(|_| Counts::default()).collect();
        let mut seq_counts: Vec<Counts> = pre.sequences.iter().map(|_| Counts::default()).collect();
        let mut stats: Vec<Stats> = pre.dense.iter().map(|_| Stats::default()).collect();
        let mut domains: BTreeSet<String> = BTreeSet::new();

        let mut record = StringRecord::new();
        let (mut read_rows, mut fitted) = (0u64, 0u64);
        while let Some(place) = src.next_row(&mut record)? {
            let index = read_rows;
            read_rows += 1;
            if read_rows % PROGRESS_EVERY == 0 {
                reporter.report(Pass::Fit, file, read_rows, total);
            }
            if select.is_some_and(|s| !s(index)) {
                continue;
            }
            fitted += 1;
            pre.check_width(&bind, &record, file, place)?;
            let get = |i: usize| bind.value(&record, i);
            for ((f, &col), counts) in pre.sparse.iter().zip(&bind.sparse).zip(&mut sparse_counts) {
                if let Encoding::Vocab { .. } = f.encoding {
                    let v = get(col);
                    if pre.is_missing(v) {
                        counts.missing += 1;
                    } else {
                        counts.add(v);
                    }
                }
            }
            for ((f, &col), st) in pre.dense.iter().zip(&bind.dense).zip(&mut stats) {
                if let Some(x) = pre.dense_raw(get(col)).map_err(|m| pre.err(file, place, &f.name, m))? {
                    // Refused here already (`log` of a negative), at the
                    // first training row that has it.
                    f.scale(x).map_err(|m| pre.err(file, place, &f.name, m))?;
                    st.add(x);
                }
            }
            for ((q, &col), counts) in pre.sequences.iter().zip(&bind.sequences).zip(&mut seq_counts) {
                if let Some(Encoding::Vocab { .. }) = q.encoding {
                    for token in pre.tokens(q, get(col)) {
                        counts.add(token);
                    }
                }
            }
            if let (Some(d), Some(col)) = (&pre.domain, bind.domain) {
                let v = get(col);
                if pre.is_missing(v) {
                    return Err(pre.err(
                        file,
                        place,
                        &d.column,
                        "the domain is missing (a row's domain cannot be unknown)",
                    ));
                }
                if !domains.contains(v) {
                    domains.insert(v.to_string());
                }
            }
        }
        reporter.report(Pass::Fit, file, read_rows, total);
        if fitted == 0 {
            let message = if read_rows == 0 {
                "no data rows"
            } else {
                "no training rows selected"
            };
            return Err(DataError::input(file, src.end_place(), None, message));
        }

        for (f, counts) in pre.sparse.iter_mut().zip(sparse_counts) {
            if let Encoding::Vocab { vocab } = &mut f.encoding {
                *vocab = Vocab::fit(counts.counts, counts.missing, vocab.min_count)?;
            }
        }
        for (q, counts) in pre.sequences.iter_mut().zip(seq_counts) {
            if let Some(Encoding::Vocab { vocab }) = &mut q.encoding {
                *vocab = Vocab::fit(counts.counts, counts.missing, vocab.min_count)?;
            }
        }
        for ((f, st), spec) in pre.dense.iter_mut().zip(stats).zip(&schema.dense) {
            f.count = st.n;
            if st.n > 0 {
                f.mean = st.mean;
                f.std = (st.m2 / st.n as f64).sqrt();
                f.min = st.min;
                f.max = st.max;
            }
            f.fill = spec.fill.unwrap_or(f.mean);
        }
        if let Some(d) = &mut pre.domain {
            d.names = domains.into_iter().collect();
        }
        pre.train_rows = fitted;
        Ok(pre)
    }

    fn err(&self, file: &Path, place: Place, column: &str, message: impl Into<String>) -> DataError {
        DataError::input(file, place, Some(column), message)
    }

    fn is_missing(&self, value: &str) -> bool {
        self.read.missing.iter().any(|m| m == value)
    }

    /// A dense field's raw value: `None` when missing (or NaN).
    fn dense_raw(&self, value: &str) -> std::result::Result<Option<f64>, String> {
        if self.is_missing(value) {
            return Ok(None);
        }
        match value.trim().parse::<f64>() {
            Ok(x) if x.is_nan() => Ok(None),
            Ok(x) if x.is_finite() => Ok(Some(x)),
            Ok(_) => Err(format!("`{value}` is not a finite number")),
            Err(_) => Err(format!("cannot read `{value}` as a number")),
        }
    }

    /// A sequence value's tokens: split, trimmed, without empty or missing ones.
    fn tokens<'v>(&'v self, q: &'v FittedSequence, value: &'v str) -> impl Iterator<Item = &'v str> + 'v {
        let missing = self.is_missing(value);
        value
            .split(q.separator.as_str())
            .map(str::trim)
            .filter(move |t| !missing && !t.is_empty() && !self.is_missing(t))
    }

    /// The encoding a sequence's tokens use (its own or the shared field's).
    fn sequence_encoding<'s>(&'s self, q: &'s FittedSequence) -> Option<&'s Encoding> {
        match &q.share_with {
            Some(s) => self.sparse.iter().find(|f| &f.name == s).map(|f| &f.encoding),
            None => q.encoding.as_ref(),
        }
    }

    fn sequence_vocab(&self, q: &FittedSequence) -> usize {
        self.sequence_encoding(q).map_or(1, Encoding::size)
    }

    /// Finds the preprocessor's columns in a file; errors name the missing,
    /// duplicated or unused columns.
    fn bind(&self, src: &dyn RowSource, labels: Labels) -> Result<Binding> {
        let file = src.file();
        let columns = src.columns().to_vec();
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            positions.entry(c.as_str()).or_default().push(i);
        }
        let mut used = vec![false; columns.len()];
        let mut find = |name: &str, role: &str, required: bool| -> Result<Option<usize>> {
            match positions.get(name).map(Vec::as_slice) {
                Some([i]) => {
                    used[*i] = true;
                    Ok(Some(*i))
                }
                Some(_) => Err(DataError::input(
                    file,
                    src.header_place(),
                    Some(name),
                    format!("the file has several columns named `{name}` ({role})"),
                )),
                None if !required => Ok(None),
                None => Err(DataError::input(
                    file,
                    src.header_place(),
                    Some(name),
                    format!(
                        "the {role} column is not in the file; its columns are: {}",
                        name_list(&columns)
                    ),
                )),
            }
        };
        let req = |o: Result<Option<usize>>| o.map(|c| c.unwrap_or(usize::MAX));
        let mut sparse = Vec::new();
        for f in &self.sparse {
            sparse.push(req(find(&f.name, "sparse", true))?);
        }
        let mut dense = Vec::new();
        for f in &self.dense {
            dense.push(req(find(&f.name, "dense", true))?);
        }
        let mut sequences = Vec::new();
        for f in &self.sequences {
            sequences.push(req(find(&f.name, "sequence", true))?);
        }
        let domain = match &self.domain {
            Some(d) => Some(req(find(&d.column, "domain", true))?),
            None => None,
        };
        let required = labels == Labels::Required;
        let mut label_cols = Vec::new();
        let mut mask_cols = Vec::new();
        for t in &self.tasks {
            let what = format!("task `{}` label", t.name);
            label_cols.push(find(&t.label.column, &what, required)?);
            mask_cols.push(match &t.mask {
                Some(m) => Some(find(&m.column, &format!("task `{}` mask", t.name), required)?),
                None => None,
            });
        }
        for c in &self.ignore {
            if let Some(list) = positions.get(c.as_str()) {
                for &i in list {
                    used[i] = true;
                }
            }
        }
        if !self.ignore_rest {
            let unused: Vec<String> = columns
                .iter()
                .zip(&used)
                .filter(|(_, &u)| !u)
                .map(|(c, _)| c.clone())
                .collect();
            if let Some(first) = unused.first() {
                return Err(DataError::input(
                    file,
                    src.header_place(),
                    Some(first),
                    format!(
                        "columns not used by the schema: {}; use them, list them in `ignore`, \
                         or set `ignore_rest = true`",
                        name_list(&unused)
                    ),
                ));
            }
        }
        Ok(Binding {
            width: columns.len(),
            trim: src.trims(),
            columns,
            sparse,
            dense,
            sequences,
            domain,
            labels: label_cols,
            masks: mask_cols,
        })
    }

    fn check_width(&self, bind: &Binding, record: &StringRecord, file: &Path, place: Place) -> Result<()> {
        let n = record.len();
        if n == bind.width {
            return Ok(());
        }
        if n < bind.width {
            let first = &bind.columns[n];
            Err(DataError::input(
                file,
                place,
                Some(first),
                format!(
                    "the line has {n} fields but the file has {} columns: `{first}` and later are missing",
                    bind.width
                ),
            ))
        } else {
            let last = bind.columns.last().map_or("", String::as_str);
            Err(DataError::input(
                file,
                place,
                None,
                format!(
                    "the line has {n} fields but the file has {} columns (the last is `{last}`)",
                    bind.width
                ),
            ))
        }
    }

    /// Encodes one row into the builder.
    fn encode_row(
        &self,
        bind: &Binding,
        conds: &[(Cond, Option<Cond>)],
        record: &StringRecord,
        file: &Path,
        place: Place,
        out: &mut Builder,
    ) -> Result<()> {
        self.check_width(bind, record, file, place)?;
        let get = |i: usize| bind.value(record, i);
        for (f, &col) in self.sparse.iter().zip(&bind.sparse) {
            let v = get(col);
            out.sparse.push(if self.is_missing(v) { 0 } else { f.encoding.id(v) });
        }
        for (f, &col) in self.dense.iter().zip(&bind.dense) {
            let raw = self
                .dense_raw(get(col))
                .map_err(|m| self.err(file, place, &f.name, m))?
                .unwrap_or(f.fill);
            let x = f.scale(raw).map_err(|m| self.err(file, place, &f.name, m))? as f32;
            if !x.is_finite() {
                return Err(self.err(
                    file,
                    place,
                    &f.name,
                    format!("`{}` scales to {x}, not a finite 32-bit number", get(col)),
                ));
            }
            out.dense.push(x);
        }
        for (k, (q, &col)) in self.sequences.iter().zip(&bind.sequences).enumerate() {
            let encoding = self.sequence_encoding(q);
            let ids = &mut out.seq_ids[k];
            let start = ids.len();
            for token in self.tokens(q, get(col)).take(q.max_len) {
                ids.push(encoding.map_or(0, |e| e.id(token)));
            }
            let n = ids.len() - start;
            ids.resize(start + q.max_len, 0);
            out.seq_lengths[k].push(n as u32);
        }
        if let (Some(d), Some(col)) = (&self.domain, bind.domain) {
            let v = get(col);
            if self.is_missing(v) {
                return Err(self.err(
                    file,
                    place,
                    &d.column,
                    "the domain is missing (a row's domain cannot be unknown)",
                ));
            }
            match d.names.binary_search_by(|n| n.as_str().cmp(v)) {
                Ok(i) => out.domains.push(i as u32),
                Err(_) => {
                    return Err(self.err(
                        file,
                        place,
                        &d.column,
                        format!(
                        "domain `{v}` was not in the training data (known: {}); domains cannot be out-of-vocabulary",
                        name_list(&d.names)
                    ),
                    ))
                }
            }
        }
        for (k, t) in self.tasks.iter().enumerate() {
            let (label_cond, mask_cond) = &conds[k];
            let mut label = 0.0f32;
            let mut mask = 0.0f32;
            let in_space = match (&t.mask, bind.masks[k], mask_cond) {
                (None, _, _) => true,
                (Some(rule), Some(Some(col)), Some(cond)) => {
                    let v = get(col);
                    !self.is_missing(v)
                        && cond
                            .holds(v)
                            .map_err(|m| self.err(file, place, &rule.column, format!("task `{}` mask: {m}", t.name)))?
                }
                _ => false, // mask column absent (labels optional)
            };
            if let (true, Some(col)) = (in_space, bind.labels[k]) {
                let v = get(col);
                if !self.is_missing(v) {
                    let column = &t.label.column;
                    label = match t.kind {
                        TaskKind::Binary => {
                            f32::from(u8::from(label_cond.holds(v).map_err(|m| {
                                self.err(file, place, column, format!("task `{}`: {m}", t.name))
                            })?))
                        }
                        TaskKind::Regression => parse_number(v)
                            .map_err(|m| self.err(file, place, column, format!("task `{}`: {m}", t.name)))?
                            as f32,
                    };
                    mask = 1.0;
                }
            }
            out.labels.push(label);
            out.masks.push(mask);
        }
        out.rows += 1;
        Ok(())
    }

    fn conditions(&self) -> Vec<(Cond, Option<Cond>)> {
        self.tasks
            .iter()
            .map(|t| (Cond::of(&t.label), t.mask.as_ref().map(Cond::of)))
            .collect()
    }

    /// Reads every row of `path` into a dataset.
    pub fn encode_file(&self, path: &Path, labels: Labels, progress: ProgressFn<'_>) -> Result<Dataset> {
        let mut reporter = Reporter::new(progress);
        self.encode_with(path, labels, &mut reporter)
    }

    pub(crate) fn encode_with(&self, path: &Path, labels: Labels, reporter: &mut Reporter<'_>) -> Result<Dataset> {
        let mut chunks = EncodeChunks::new(PreRef::Borrowed(self), path, usize::MAX, labels);
        chunks.take_error()?;
        match chunks.read_chunk(reporter)? {
            Some(data) => Ok(data),
            None => Err(DataError::input(path, Place::File, None, "no data rows")),
        }
    }

    /// Every row of an opened source as one dataset (rows held in memory:
    /// [`crate::encode_row`]); the same binding and row encoding as a file's.
    pub(crate) fn encode_source(&self, mut src: Box<dyn RowSource>, labels: Labels) -> Result<Dataset> {
        let bind = self.bind(src.as_ref(), labels)?;
        let (conds, file) = (self.conditions(), src.file().to_path_buf());
        let (mut record, mut out) = (StringRecord::new(), Builder::new(self));
        while let Some(place) = src.next_row(&mut record)? {
            self.encode_row(&bind, &conds, &record, &file, place, &mut out)?;
        }
        out.finish(self)
    }

    /// Reads `path` (labels required) into a dataset, for evaluation.
    pub fn load_file(&self, path: &Path) -> Result<Dataset> {
        self.encode_file(path, Labels::Required, None)
    }

    /// Reads `path` in datasets of at most `chunk_rows` rows each, for files
    /// larger than memory. An error (the file cannot be opened, a bad row)
    /// is the last item; an empty file is an error. Count rows read with
    /// each chunk's [`Dataset::rows`].
    pub fn encode_chunks<'p>(&'p self, path: &Path, chunk_rows: usize, labels: Labels) -> EncodeChunks<'p> {
        EncodeChunks::new(PreRef::Borrowed(self), path, chunk_rows, labels)
    }

    /// [`Preprocessor::encode_chunks`] holding the preprocessor by `Arc`:
    /// chunks that can be read on another thread.
    pub fn encode_chunks_shared(
        self: &Arc<Self>,
        path: &Path,
        chunk_rows: usize,
        labels: Labels,
    ) -> EncodeChunks<'static> {
        EncodeChunks::new(PreRef::Shared(Arc::clone(self)), path, chunk_rows, labels)
    }

    /// [`Preprocessor::encode_part_chunks`] holding the preprocessor by `Arc`.
    pub fn encode_part_chunks_shared(
        self: &Arc<Self>,
        path: &Path,
        chunk_rows: usize,
        split: HashSplit,
        part: Part,
    ) -> EncodeChunks<'static> {
        let mut chunks = EncodeChunks::new(PreRef::Shared(Arc::clone(self)), path, chunk_rows, Labels::Required);
        chunks.keep = Some((split, part));
        chunks
    }

    /// [`Preprocessor::encode_chunks`] of only the rows of `file` that the
    /// hash split puts in `part` (rows of other parts are read, not encoded).
    pub fn encode_part_chunks<'p>(
        &'p self,
        path: &Path,
        chunk_rows: usize,
        split: HashSplit,
        part: Part,
    ) -> EncodeChunks<'p> {
        let mut chunks = EncodeChunks::new(PreRef::Borrowed(self), path, chunk_rows, Labels::Required);
        chunks.keep = Some((split, part));
        chunks
    }

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

    /// The state as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| DataError::schema(format!("cannot write the preprocessor: {e}")))
    }

    /// The state from JSON written by [`Preprocessor::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        let pre: Preprocessor =
            serde_json::from_str(text).map_err(|e| DataError::schema(format!("cannot read a preprocessor: {e}")))?;
        if pre.version != FORMAT_VERSION {
            return Err(DataError::schema(format!(
                "preprocessor format version {} is not the supported {FORMAT_VERSION}",
                pre.version
            )));
        }
        for q in &pre.sequences {
            if pre.sequence_encoding(q).is_none() {
                return Err(DataError::schema(format!(
                    "sequence `{}` has no encoding and shares no sparse field",
                    q.name
                )));
            }
        }
        Ok(pre)
    }

    /// Writes the state to `path` as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(mtrec_core::atomic::write_bytes(path, self.to_json()?.as_bytes())?)
    }

    /// Reads a state saved by [`Preprocessor::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            DataError::Schema(m) => DataError::input(path, Place::File, None, m),
            other => other,
        })
    }
}

enum ChunkState {
    Failed(DataError),
    Reading { src: Box<dyn RowSource>, bind: Binding },
    Done,
}

/// The preprocessor of an [`EncodeChunks`]: borrowed, or shared so that the
/// chunks can move to a reading thread.
enum PreRef<'p> {
    Borrowed(&'p Preprocessor),
    Shared(Arc<Preprocessor>),
}

impl std::ops::Deref for PreRef<'_> {
    type Target = Preprocessor;
    fn deref(&self) -> &Preprocessor {
        match self {
            PreRef::Borrowed(p) => p,
            PreRef::Shared(p) => p,
        }
    }
}

/// The datasets of [`Preprocessor::encode_chunks`].
pub struct EncodeChunks<'p> {
    pre: PreRef<'p>,
    file: PathBuf,
    chunk_rows: usize,
    conds: Vec<(Cond, Option<Cond>)>,
    state: ChunkState,
    record: StringRecord,
    /// Rows encoded so far.
    rows: u64,
    /// Rows read so far (encoded or skipped by `keep`).
    read: u64,
    /// Only the rows of this part of this split are encoded.
    keep: Option<(HashSplit, Part)>,
}

impl std::fmt::Debug for EncodeChunks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeChunks")
            .field("file", &self.file)
            .field("chunk_rows", &self.chunk_rows)
            .field("rows", &self.rows)
            .finish()
    }
}

impl<'p> EncodeChunks<'p> {
    fn new(pre: PreRef<'p>, path: &Path, chunk_rows: usize, labels: Labels) -> Self {
        let state = if chunk_rows == 0 {
            ChunkState::Failed(DataError::setting("chunk_rows", 0, "at least 1"))
        } else {
            match read::open(path, &pre.read).and_then(|src| {
                let bind = pre.bind(src.as_ref(), labels)?;
                Ok((src, bind))
            }) {
                Ok((src, bind)) => ChunkState::Reading { src, bind },
                Err(e) => ChunkState::Failed(e),
            }
        };
        let conds = pre.conditions();
        Self {
            pre,
            file: path.to_path_buf(),
            chunk_rows,
            conds,
            state,
            record: StringRecord::new(),
            rows: 0,
            read: 0,
            keep: None,
        }
    }

    /// The error met on opening, if any (the iterator is then done).
    fn take_error(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, ChunkState::Done) {
            ChunkState::Failed(e) => Err(e),
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    fn read_chunk(&mut self, reporter: &mut Reporter<'_>) -> Result<Option<Dataset>> {
        let ChunkState::Reading { src, bind } = &mut self.state else {
            return Ok(None);
        };
        let total = src.known_rows();
        let mut out = Builder::new(&self.pre);
        while out.rows < self.chunk_rows {
            let Some(place) = src.next_row(&mut self.record)? else {
                break;
            };
            let index = self.read;
            self.read += 1;
            if self.read % PROGRESS_EVERY == 0 {
                reporter.report(Pass::Encode, &self.file, self.read, total);
            }
            if self
                .keep
                .as_ref()
                .is_some_and(|(split, part)| split.part(index) != *part)
            {
                continue;
            }
            self.pre
                .encode_row(bind, &self.conds, &self.record, &self.file, place, &mut out)?;
        }
        reporter.report(Pass::Encode, &self.file, self.read, total);
        if out.rows == 0 {
            if self.rows == 0 {
                let message = match &self.keep {
                    Some((split, part)) if self.read > 0 => format!(
                        "none of the file's {} rows falls in the {part} part of the split {:?}; \
                         give more rows or larger fractions",
                        self.read, split.fractions
                    ),
                    _ => "no data rows".to_string(),
                };
                return Err(DataError::input(&self.file, src.end_place(), None, message));
            }
            return Ok(None);
        }
        self.rows += out.rows as u64;
        out.finish(&self.pre).map(Some)
    }
}

impl Iterator for EncodeChunks<'_> {
    type Item = Result<Dataset>;

    fn next(&mut self) -> Option<Result<Dataset>> {
        match std::mem::replace(&mut self.state, ChunkState::Done) {
            ChunkState::Failed(e) => Some(Err(e)),
            ChunkState::Done => None,
            reading => {
                self.state = reading;
                match self.read_chunk(&mut Reporter::new(None)) {
                    Ok(Some(d)) => Some(Ok(d)),
                    Ok(None) => {
                        self.state = ChunkState::Done;
                        None
                    }
                    Err(e) => {
                        self.state = ChunkState::Done;
                        Some(Err(e))
                    }
                }
            }
        }
    }
}
