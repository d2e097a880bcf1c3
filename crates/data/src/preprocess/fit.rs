//! Fitting on the training rows: one pass counting values and dense
//! statistics, then vocabularies, fills and scaling.

use std::collections::BTreeSet;
use std::path::Path;

use csv::StringRecord;
use fnv::FnvHashMap;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Place, Result};
use crate::read::{self, ReadOptions};
use crate::schema::{TabularSchema, TaskSpec};

use super::{
    Encoding, FittedDense, FittedDomain, FittedSequence, FittedSparse, Labels, Pass, Preprocessor, ProgressFn,
    Reporter, Vocab, FORMAT_VERSION, PROGRESS_EVERY,
};

/// Welford's running mean and variance, with min and max.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Stats {
    pub(super) n: u64,
    pub(super) mean: f64,
    pub(super) m2: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Stats {
    pub(super) fn add(&mut self, x: f64) {
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

    /// Adds the statistics of other rows (Chan et al.'s pairwise update):
    /// the same mean and variance as one pass over both, up to rounding.
    fn merge(&mut self, o: &Stats) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = o.clone();
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.n = n;
    }
}

/// Counts of a categorical field's training values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Counts {
    pub(super) counts: FnvHashMap<String, u64>,
    pub(super) missing: u64,
}

impl Counts {
    pub(super) fn add(&mut self, value: &str) {
        match self.counts.get_mut(value) {
            Some(c) => *c += 1,
            None => {
                self.counts.insert(value.to_string(), 1);
            }
        }
    }

    fn merge(&mut self, o: Counts) {
        self.missing += o.missing;
        for (v, c) in o.counts {
            *self.counts.entry(v).or_insert(0) += c;
        }
    }
}

/// What one pass over (some of) the training rows counted, before the
/// vocabularies and statistics are formed from it: the part of a fit that
/// the ranks of a data-parallel run, each reading its own rows, exchange
/// and add ([`FitCounts::merge`], [`FitCounts::to_bytes`]) so that every
/// rank forms the preprocessing of all rows. Vocabularies are ordered by
/// count then value and domains by name, so they do not depend on which
/// reader saw a row; dense statistics are merged pairwise (equal to one
/// pass up to rounding).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitCounts {
    sparse: Vec<Counts>,
    sequences: Vec<Counts>,
    dense: Vec<Stats>,
    domains: BTreeSet<String>,
    /// Rows counted.
    rows: u64,
}

impl FitCounts {
    /// Adds another reader's counts (of the same schema).
    pub fn merge(&mut self, other: FitCounts) -> Result<()> {
        let shape = |c: &FitCounts| (c.sparse.len(), c.sequences.len(), c.dense.len());
        if shape(self) != shape(&other) {
            return Err(DataError::schema(format!(
                "fit counts of different schemas cannot be added: (sparse, sequences, dense) fields {:?} and {:?}",
                shape(self),
                shape(&other)
            )));
        }
        for (a, b) in self.sparse.iter_mut().zip(other.sparse) {
            a.merge(b);
        }
        for (a, b) in self.sequences.iter_mut().zip(other.sequences) {
            a.merge(b);
        }
        for (a, b) in self.dense.iter_mut().zip(&other.dense) {
            a.merge(b);
        }
        self.domains.extend(other.domains);
        self.rows += other.rows;
        Ok(())
    }

    /// The counts as bytes (JSON), to send to the other ranks.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| DataError::Exchange(format!("cannot encode the counts: {e}")))
    }

    /// Counts sent by [`FitCounts::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| DataError::Exchange(format!("malformed counts: {e}")))
    }

    /// Rows counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// Adds the counts of every reader (a data-parallel run's ranks) to one
/// reader's own: given this reader's counts, returns all readers'.
pub type MergeCounts<'a> = &'a dyn Fn(FitCounts) -> Result<FitCounts>;

impl Preprocessor {
    /// The unfitted state the schema describes (empty vocabularies and
    /// statistics), after [`TabularSchema::check`].
    pub(super) fn plan(schema: &TabularSchema, tasks: &[TaskSpec]) -> Result<Self> {
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
            group: schema.group.clone(),
            weight: schema.weight.clone(),
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
        Self::fit_merged(schema, tasks, file, select, None, reporter)
    }

    /// [`Preprocessor::fit_selected`] on this reader's rows, with `merge`
    /// adding the other readers' counts before the vocabularies and
    /// statistics are formed (`None`: this reader's rows are all).
    pub(crate) fn fit_merged(
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        file: &Path,
        select: Option<&dyn Fn(u64) -> bool>,
        merge: Option<MergeCounts<'_>>,
        reporter: &mut Reporter<'_>,
    ) -> Result<Self> {
        let (pre, counts, end) = Self::count_selected(schema, tasks, file, select, reporter)?;
        let counts = match merge {
            Some(merge) => merge(counts)?,
            None => counts,
        };
        if counts.rows == 0 {
            return Err(DataError::input(file, end, None, "no training rows selected"));
        }
        pre.finish_fit(schema, counts)
    }

    /// One pass over `file` counting the selected rows' values: the
    /// unfitted preprocessing, the counts, and the place the file ends.
    fn count_selected(
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        file: &Path,
        select: Option<&dyn Fn(u64) -> bool>,
        reporter: &mut Reporter<'_>,
    ) -> Result<(Self, FitCounts, Place)> {
        let pre = Self::plan(schema, tasks)?;
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
        if read_rows == 0 {
            return Err(DataError::input(file, src.end_place(), None, "no data rows"));
        }
        let counts = FitCounts {
            sparse: sparse_counts,
            sequences: seq_counts,
            dense: stats,
            domains,
            rows: fitted,
        };
        Ok((pre, counts, src.end_place()))
    }

    /// The vocabularies, fills, scaling and domains formed from `counts`.
    fn finish_fit(mut self, schema: &TabularSchema, counts: FitCounts) -> Result<Self> {
        for (f, c) in self.sparse.iter_mut().zip(counts.sparse) {
            if let Encoding::Vocab { vocab } = &mut f.encoding {
                *vocab = Vocab::fit(c.counts, c.missing, vocab.min_count)?;
            }
        }
        for (q, c) in self.sequences.iter_mut().zip(counts.sequences) {
            if let Some(Encoding::Vocab { vocab }) = &mut q.encoding {
                *vocab = Vocab::fit(c.counts, c.missing, vocab.min_count)?;
            }
        }
        for ((f, st), spec) in self.dense.iter_mut().zip(counts.dense).zip(&schema.dense) {
            f.count = st.n;
            if st.n > 0 {
                f.mean = st.mean;
                f.std = (st.m2 / st.n as f64).sqrt();
                f.min = st.min;
                f.max = st.max;
            }
            f.fill = spec.fill.unwrap_or(f.mean);
        }
        if let Some(d) = &mut self.domain {
            d.names = counts.domains.into_iter().collect();
        }
        self.train_rows = counts.rows;
        Ok(self)
    }
}
