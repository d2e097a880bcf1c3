//! A columnar, host-side dataset and the tensor batches gathered from it.
//!
//! Data stays on the host as flat row-major vectors: splitting, shuffling and
//! subsetting are then plain index work, and only the rows of one batch are
//! copied to the device, as tensors of the shapes [`mtrec_core::Inputs`] expects.

use std::collections::HashSet;

use candle_core::{Device, Tensor};
use mtrec_core::{
    Domains, FeatureSpec, Inputs, Pooling, SequenceFeature, SequenceInput, SparseFeature, TaskInfo, TaskKind,
};

use crate::error::{DataError, Result};

/// Categorical features: one column per field, already mapped into
/// `0..vocab[f]` (out-of-vocabulary values included), as embeddings need.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseColumns {
    /// One name per field.
    pub fields: Vec<String>,
    /// Vocabulary size of each field; every id of field `f` is below `vocab[f]`.
    pub vocab: Vec<usize>,
    /// Row-major `[rows, fields.len()]`.
    pub ids: Vec<u32>,
}

/// Numeric features, already scaled.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseColumns {
    /// One name per feature.
    pub names: Vec<String>,
    /// Row-major `[rows, names.len()]`.
    pub values: Vec<f32>,
}

/// The domain (scenario) of every row, for multi-domain models.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainColumn {
    /// One name per domain; the domain id is the index into this list.
    pub names: Vec<String>,
    /// One id per row, each below `names.len()`.
    pub ids: Vec<u32>,
}

/// A list-valued (multi-hot) field, e.g. the last items a user clicked:
/// per row up to `max_len` ids, padded with 0. [`Dataset::batch`] hands it to
/// the model as a `mtrec_core::SequenceInput` (`[B, max_len]` ids + lengths).
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceColumn {
    pub name: String,
    /// Ids per row (the width of `ids`), >= 1.
    pub max_len: usize,
    /// Row-major `[rows, max_len]`; 0 is padding (and out-of-vocabulary).
    pub ids: Vec<u32>,
    /// Per row, how many of its `max_len` ids are real (the rest are 0).
    pub lengths: Vec<u32>,
    /// Every id is below `vocab`.
    pub vocab: usize,
    /// The sparse field whose vocabulary and embedding table this sequence
    /// shares, if any.
    pub share_with: Option<String>,
}

/// A whole dataset on the host, columnar.
///
/// Labels and masks are row-major `[rows, K]` with `K = tasks.len()`: a row
/// may carry the labels of only some tasks (e.g. conversion only after a
/// click), and `masks` says which (1 = carries task `k`'s label, 0 = not; the
/// label value is then ignored). Build it with [`Dataset::new`], which checks
/// that everything fits together, so batching never meets bad data.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub tasks: Vec<TaskInfo>,
    pub sparse: Option<SparseColumns>,
    pub dense: Option<DenseColumns>,
    /// Row-major `[rows, K]`.
    pub labels: Vec<f32>,
    /// Row-major `[rows, K]`: 1 where the row carries task `k`'s label, else 0.
    pub masks: Vec<f32>,
    pub domains: Option<DomainColumn>,
    /// List-valued fields (empty unless set with [`Dataset::with_sequences`]).
    pub sequences: Vec<SequenceColumn>,
    /// Per row, the weight of its loss in every task (`[data] weight`):
    /// finite and >= 0 ([`Dataset::with_weights`]). `None`: every row weighs 1.
    pub weights: Option<Vec<f32>>,
    /// Per row, the id of its group (`[data] group`, usually the user), for
    /// GAUC ([`Dataset::with_groups`]). Only equality of ids matters.
    pub groups: Option<Vec<u64>>,
    rows: usize,
}

/// One task's labelled rows and positives in some rows of a dataset
/// ([`Dataset::label_counts`]); counts of several parts add up with
/// [`LabelCount::add`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelCount {
    /// Rows whose mask is 1 (that carry the task's label).
    pub labelled: usize,
    /// Labelled rows with label 1.
    pub positives: usize,
}

impl LabelCount {
    pub fn add(&mut self, other: LabelCount) {
        self.labelled += other.labelled;
        self.positives += other.positives;
    }

    /// Whether a binary task's AUC is defined on these rows (both classes).
    pub fn both_classes(&self) -> bool {
        self.positives > 0 && self.positives < self.labelled
    }
}

/// The tensors of one batch of rows (sequence columns in
/// `inputs.sequences`, in [`Dataset::sequences`] order).
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Inputs,
    /// `[B, K]` `f32`.
    pub labels: Tensor,
    /// `[B, K]` `f32`: 1 where the row carries task `k`'s label, else 0.
    pub masks: Tensor,
    /// `[B]` `f32`: each row's loss weight, when the data has weights.
    pub weights: Option<Tensor>,
    /// Each row's group id (host side: only evaluation reads it).
    pub groups: Option<Vec<u64>>,
}

impl Batch {
    /// Number of rows `B` of the batch.
    pub fn rows(&self) -> usize {
        self.inputs.rows()
    }
}

fn invalid(message: impl Into<String>) -> DataError {
    DataError::InvalidDataset(message.into())
}

/// Copies the listed rows of a row-major `[_, width]` matrix.
fn gather<T: Copy>(values: &[T], width: usize, rows: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&values[r * width..(r + 1) * width]);
    }
    out
}

impl Dataset {
    /// Builds a dataset and checks it: at least one task, unique non-empty task
    /// names; at least one input column (sparse, dense or domains); every column
    /// holding `rows` rows (`rows = labels.len() / K`); sparse ids below their
    /// field's vocabulary; domain ids below the number of domains; finite dense
    /// values; masks 0 or 1; where a mask is 1, a finite label, and 0 or 1 for
    /// a binary task.
    pub fn new(
        tasks: Vec<TaskInfo>,
        sparse: Option<SparseColumns>,
        dense: Option<DenseColumns>,
        labels: Vec<f32>,
        masks: Vec<f32>,
        domains: Option<DomainColumn>,
    ) -> Result<Self> {
        let k = tasks.len();
        if k == 0 {
            return Err(invalid("a dataset needs at least one task"));
        }
        let mut seen = HashSet::new();
        for t in &tasks {
            if t.name.is_empty() {
                return Err(invalid("a task has an empty name"));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(format!("task name `{}` appears twice", t.name)));
            }
        }
        if labels.len() % k != 0 {
            return Err(invalid(format!(
                "labels has {} values, not a multiple of the {k} tasks",
                labels.len()
            )));
        }
        let rows = labels.len() / k;
        if masks.len() != labels.len() {
            return Err(invalid(format!(
                "masks has {} values but labels has {} ({rows} rows x {k} tasks)",
                masks.len(),
                labels.len()
            )));
        }
        if sparse.is_none() && dense.is_none() && domains.is_none() {
            return Err(invalid(
                "a dataset needs at least one input column (sparse, dense or domains)",
            ));
        }

        if let Some(s) = &sparse {
            let f = s.fields.len();
            if f == 0 {
                return Err(invalid("sparse columns have no fields"));
            }
            if s.vocab.len() != f {
                return Err(invalid(format!(
                    "sparse columns have {f} fields but {} vocabulary sizes",
                    s.vocab.len()
                )));
            }
            if s.ids.len() != rows * f {
                return Err(invalid(format!(
                    "sparse ids has {} values, expected {rows} rows x {f} fields = {}",
                    s.ids.len(),
                    rows * f
                )));
            }
            if let Some(i) = s
                .ids
                .iter()
                .enumerate()
                .position(|(i, &id)| id as usize >= s.vocab[i % f])
            {
                let field = i % f;
                return Err(invalid(format!(
                    "sparse id {} of field `{}` at row {} is out of range: vocab is {}",
                    s.ids[i],
                    s.fields[field],
                    i / f,
                    s.vocab[field]
                )));
            }
        }

        if let Some(d) = &dense {
            let n = d.names.len();
            if n == 0 {
                return Err(invalid("dense columns have no features"));
            }
            if d.values.len() != rows * n {
                return Err(invalid(format!(
                    "dense values has {} values, expected {rows} rows x {n} features = {}",
                    d.values.len(),
                    rows * n
                )));
            }
            if let Some(i) = d.values.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "dense feature `{}` at row {} is not finite ({})",
                    d.names[i % n],
                    i / n,
                    d.values[i]
                )));
            }
        }

        if let Some(d) = &domains {
            if d.names.is_empty() {
                return Err(invalid("the domain column names no domains"));
            }
            if d.ids.len() != rows {
                return Err(invalid(format!(
                    "domain ids has {} values, expected one per row ({rows} rows)",
                    d.ids.len()
                )));
            }
            if let Some(r) = d.ids.iter().position(|&id| id as usize >= d.names.len()) {
                return Err(invalid(format!(
                    "domain id {} at row {r} is out of range: there are {} domains",
                    d.ids[r],
                    d.names.len()
                )));
            }
        }

        for (i, (&label, &mask)) in labels.iter().zip(&masks).enumerate() {
            let task = &tasks[i % k];
            if mask != 0.0 && mask != 1.0 {
                return Err(invalid(format!(
                    "mask of task `{}` at row {} is {mask}, must be 0 or 1",
                    task.name,
                    i / k
                )));
            }
            if mask == 0.0 {
                continue;
            }
            if !label.is_finite() {
                return Err(invalid(format!(
                    "label of task `{}` at row {} is not finite ({label})",
                    task.name,
                    i / k
                )));
            }
            if task.kind == TaskKind::Binary && label != 0.0 && label != 1.0 {
                return Err(invalid(format!(
                    "label of binary task `{}` at row {} is {label}, must be 0 or 1",
                    task.name,
                    i / k
                )));
            }
        }

        Ok(Self {
            tasks,
            sparse,
            dense,
            labels,
            masks,
            domains,
            sequences: Vec::new(),
            weights: None,
            groups: None,
            rows,
        })
    }

    /// The dataset with these per-row loss weights (replacing any it had):
    /// one per row, each finite and >= 0.
    pub fn with_weights(mut self, weights: Vec<f32>) -> Result<Self> {
        if weights.len() != self.rows {
            return Err(invalid(format!(
                "weights has {} values, expected one per row ({} rows)",
                weights.len(),
                self.rows
            )));
        }
        if let Some(r) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(invalid(format!(
                "weight at row {r} is {}, must be finite and >= 0",
                weights[r]
            )));
        }
        self.weights = Some(weights);
        Ok(self)
    }

    /// The dataset with these per-row group ids (replacing any it had).
    pub fn with_groups(mut self, groups: Vec<u64>) -> Result<Self> {
        if groups.len() != self.rows {
            return Err(invalid(format!(
                "groups has {} values, expected one per row ({} rows)",
                groups.len(),
                self.rows
            )));
        }
        self.groups = Some(groups);
        Ok(self)
    }

    /// The dataset with each row's group taken from sparse field `field`'s
    /// ids (e.g. `user_id` of generated data, where every user has its own id).
    pub fn with_groups_from_field(self, field: &str) -> Result<Self> {
        let found = self
            .sparse
            .as_ref()
            .and_then(|s| Some((s, s.fields.iter().position(|x| x == field)?)));
        let Some((s, at)) = found else {
            let known = self.sparse.as_ref().map(|s| s.fields.join(", ")).unwrap_or_default();
            return Err(invalid(format!(
                "group `{field}` is not a sparse field of the data (sparse fields: {known})"
            )));
        };
        let f = s.fields.len();
        let groups = s.ids.iter().skip(at).step_by(f).map(|&id| u64::from(id)).collect();
        self.with_groups(groups)
    }

    /// The dataset with these sequence columns (replacing any it had), after
    /// checking them: unique non-empty names, `max_len >= 1`, `rows x max_len`
    /// ids and `rows` lengths, every length `<= max_len`, every id below
    /// `vocab`, and the ids past a row's length 0 (padding).
    pub fn with_sequences(mut self, sequences: Vec<SequenceColumn>) -> Result<Self> {
        let rows = self.rows;
        let mut seen = HashSet::new();
        for q in &sequences {
            let name = &q.name;
            if name.is_empty() {
                return Err(invalid("a sequence column has an empty name"));
            }
            if !seen.insert(name.as_str()) {
                return Err(invalid(format!("sequence column `{name}` appears twice")));
            }
            let len = q.max_len;
            if len == 0 {
                return Err(invalid(format!("sequence column `{name}` has max_len 0")));
            }
            if q.ids.len() != rows * len || q.lengths.len() != rows {
                return Err(invalid(format!(
                    "sequence column `{name}` has {} ids and {} lengths, expected {rows} rows x {len} and {rows}",
                    q.ids.len(),
                    q.lengths.len()
                )));
            }
            for (r, &n) in q.lengths.iter().enumerate() {
                if n as usize > len {
                    return Err(invalid(format!(
                        "sequence column `{name}` row {r} has length {n} > max_len {len}"
                    )));
                }
                let row = &q.ids[r * len..(r + 1) * len];
                if let Some(&id) = row.iter().find(|&&id| id as usize >= q.vocab) {
                    return Err(invalid(format!(
                        "sequence id {id} of `{name}` at row {r} is out of range: vocab is {}",
                        q.vocab
                    )));
                }
                if row[n as usize..].iter().any(|&id| id != 0) {
                    return Err(invalid(format!(
                        "sequence column `{name}` row {r} has non-zero ids past its length {n}"
                    )));
                }
            }
        }
        self.sequences = sequences;
        Ok(self)
    }

    /// The rows of `parts`, one after the other, as one dataset. The parts
    /// must agree on everything but their rows: tasks, sparse fields and
    /// vocabularies, dense names, domain names, sequence columns.
    pub fn concat(parts: &[Dataset]) -> Result<Dataset> {
        let Some(first) = parts.first() else {
            return Err(invalid("nothing to concatenate"));
        };
        for (i, p) in parts.iter().enumerate().skip(1) {
            if !first.same_columns(p) {
                return Err(invalid(format!(
                    "cannot concatenate: part {i} differs from part 0 in its tasks or columns"
                )));
            }
        }
        let mut out = first.clone();
        for p in &parts[1..] {
            if let (Some(o), Some(s)) = (out.sparse.as_mut(), p.sparse.as_ref()) {
                o.ids.extend_from_slice(&s.ids);
            }
            if let (Some(o), Some(d)) = (out.dense.as_mut(), p.dense.as_ref()) {
                o.values.extend_from_slice(&d.values);
            }
            if let (Some(o), Some(d)) = (out.domains.as_mut(), p.domains.as_ref()) {
                o.ids.extend_from_slice(&d.ids);
            }
            for (o, q) in out.sequences.iter_mut().zip(&p.sequences) {
                o.ids.extend_from_slice(&q.ids);
                o.lengths.extend_from_slice(&q.lengths);
            }
            if let (Some(o), Some(w)) = (out.weights.as_mut(), p.weights.as_ref()) {
                o.extend_from_slice(w);
            }
            if let (Some(o), Some(g)) = (out.groups.as_mut(), p.groups.as_ref()) {
                o.extend_from_slice(g);
            }
            out.labels.extend_from_slice(&p.labels);
            out.masks.extend_from_slice(&p.masks);
            out.rows += p.rows;
        }
        Ok(out)
    }

    /// Whether `other` has the same tasks and columns (everything but the
    /// rows), so that rows can be copied between the two.
    pub fn same_columns(&self, other: &Dataset) -> bool {
        other.tasks == self.tasks
            && other.sparse.as_ref().map(|s| (&s.fields, &s.vocab))
                == self.sparse.as_ref().map(|s| (&s.fields, &s.vocab))
            && other.dense.as_ref().map(|d| &d.names) == self.dense.as_ref().map(|d| &d.names)
            && other.domains.as_ref().map(|d| &d.names) == self.domains.as_ref().map(|d| &d.names)
            && other.weights.is_some() == self.weights.is_some()
            && other.groups.is_some() == self.groups.is_some()
            && other.sequences.len() == self.sequences.len()
            && other.sequences.iter().zip(&self.sequences).all(|(a, b)| {
                (&a.name, a.max_len, a.vocab, &a.share_with) == (&b.name, b.max_len, b.vocab, &b.share_with)
            })
    }

    /// A dataset with the columns of `self` and no rows.
    pub(crate) fn empty_like(&self) -> Dataset {
        // No row index, so none out of range.
        self.subset(&[])
    }

    /// Appends row `r` of `src` (same columns, see [`Dataset::same_columns`]).
    /// Rows of a validated dataset need no new check.
    pub(crate) fn push_row(&mut self, src: &Dataset, r: usize) {
        self.put_row(None, src, r);
        self.rows += 1;
    }

    /// Overwrites row `j` with row `r` of `src` (same columns).
    pub(crate) fn replace_row(&mut self, j: usize, src: &Dataset, r: usize) {
        self.put_row(Some(j), src, r);
    }

    fn put_row(&mut self, at: Option<usize>, src: &Dataset, r: usize) {
        fn put<T: Copy>(dst: &mut Vec<T>, at: Option<usize>, src: &[T], r: usize, w: usize) {
            let row = &src[r * w..(r + 1) * w];
            match at {
                None => dst.extend_from_slice(row),
                Some(j) => dst[j * w..(j + 1) * w].copy_from_slice(row),
            }
        }
        let k = self.task_count();
        if let (Some(d), Some(s)) = (self.sparse.as_mut(), src.sparse.as_ref()) {
            put(&mut d.ids, at, &s.ids, r, s.fields.len());
        }
        if let (Some(d), Some(s)) = (self.dense.as_mut(), src.dense.as_ref()) {
            put(&mut d.values, at, &s.values, r, s.names.len());
        }
        if let (Some(d), Some(s)) = (self.domains.as_mut(), src.domains.as_ref()) {
            put(&mut d.ids, at, &s.ids, r, 1);
        }
        for (d, s) in self.sequences.iter_mut().zip(&src.sequences) {
            put(&mut d.ids, at, &s.ids, r, s.max_len);
            put(&mut d.lengths, at, &s.lengths, r, 1);
        }
        if let (Some(d), Some(s)) = (self.weights.as_mut(), src.weights.as_ref()) {
            put(d, at, s, r, 1);
        }
        if let (Some(d), Some(s)) = (self.groups.as_mut(), src.groups.as_ref()) {
            put(d, at, s, r, 1);
        }
        put(&mut self.labels, at, &src.labels, r, k);
        put(&mut self.masks, at, &src.masks, r, k);
    }

    /// Removes row `j`, moving the last row into its place (O(1), order not kept).
    pub(crate) fn swap_remove_row(&mut self, j: usize) {
        fn remove<T: Copy>(v: &mut Vec<T>, j: usize, last: usize, w: usize) {
            if j != last {
                v.copy_within(last * w..(last + 1) * w, j * w);
            }
            v.truncate(last * w);
        }
        let Some(last) = self.rows.checked_sub(1) else {
            return;
        };
        let k = self.task_count();
        if let Some(s) = self.sparse.as_mut() {
            let w = s.fields.len();
            remove(&mut s.ids, j, last, w);
        }
        if let Some(d) = self.dense.as_mut() {
            let w = d.names.len();
            remove(&mut d.values, j, last, w);
        }
        if let Some(d) = self.domains.as_mut() {
            remove(&mut d.ids, j, last, 1);
        }
        for q in &mut self.sequences {
            let w = q.max_len;
            remove(&mut q.ids, j, last, w);
            remove(&mut q.lengths, j, last, 1);
        }
        if let Some(w) = self.weights.as_mut() {
            remove(w, j, last, 1);
        }
        if let Some(g) = self.groups.as_mut() {
            remove(g, j, last, 1);
        }
        remove(&mut self.labels, j, last, k);
        remove(&mut self.masks, j, last, k);
        self.rows = last;
    }

    /// All rows, in order, as one batch of tensors on `device`.
    pub fn to_batch(&self, device: &Device) -> Result<Batch> {
        let rows: Vec<usize> = (0..self.rows).collect();
        self.batch(&rows, device)
    }
    /// The model input this data implies: every sparse field (embedded with
    /// `embedding_dim`), every dense column, every sequence (mean-pooled, in
    /// its shared field's table or its own of `embedding_dim`). Tabular data
    /// gets its per-field dims and pooling from its `Preprocessor::features`
    /// instead.
    pub fn features(&self, embedding_dim: usize) -> FeatureSpec {
        FeatureSpec {
            sequences: self
                .sequences
                .iter()
                .map(|q| SequenceFeature {
                    name: q.name.clone(),
                    max_len: q.max_len,
                    vocab: q.vocab,
                    dim: embedding_dim,
                    pooling: Pooling::Mean,
                    share_with: q.share_with.clone(),
                })
                .collect(),
            sparse: self
                .sparse
                .as_ref()
                .map(|s| {
                    s.fields
                        .iter()
                        .zip(&s.vocab)
                        .map(|(name, &vocab)| SparseFeature {
                            name: name.clone(),
                            vocab,
                            dim: embedding_dim,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            dense: self.dense.as_ref().map(|d| d.names.clone()).unwrap_or_default(),
            ..FeatureSpec::default()
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of tasks `K`.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Per task (task order), the labelled rows (mask 1) among `rows` (all
    /// rows when `None`) and how many of them have label 1 (binary tasks'
    /// positives; meaningless for regression). Whether a metric can exist
    /// follows from it: AUC needs both classes, any metric a labelled row.
    pub fn label_counts(&self, rows: Option<&[usize]>) -> Result<Vec<LabelCount>> {
        self.counts_of(rows, false)
    }

    /// [`Dataset::label_counts`] of the rows that weigh something: rows of
    /// weight 0 are left out (they count in no weighted metric). Without
    /// weights, the same as [`Dataset::label_counts`].
    pub fn weighted_label_counts(&self, rows: Option<&[usize]>) -> Result<Vec<LabelCount>> {
        self.counts_of(rows, true)
    }

    fn counts_of(&self, rows: Option<&[usize]>, weighted: bool) -> Result<Vec<LabelCount>> {
        let k = self.task_count();
        let mut counts = vec![LabelCount::default(); k];
        let weights = self.weights.as_deref().filter(|_| weighted);
        let mut add = |r: usize| {
            if weights.is_some_and(|w| w[r] <= 0.0) {
                return;
            }
            for (t, c) in counts.iter_mut().enumerate() {
                if self.masks[r * k + t] > 0.0 {
                    c.labelled += 1;
                    c.positives += usize::from(self.labels[r * k + t] == 1.0);
                }
            }
        };
        match rows {
            Some(rows) => {
                self.check_rows(rows)?;
                rows.iter().for_each(|&r| add(r));
            }
            None => (0..self.rows).for_each(add),
        }
        Ok(counts)
    }

    fn check_rows(&self, rows: &[usize]) -> Result<()> {
        match rows.iter().find(|&&r| r >= self.rows) {
            Some(&row) => Err(DataError::RowOutOfRange { row, rows: self.rows }),
            None => Ok(()),
        }
    }

    /// Sets the labels of `rows` to those rows of `labels`, a row-major
    /// `[rows, K]` label matrix of the whole dataset (e.g. labels without a
    /// logging bias for the test rows). Errors on a row out of range, a
    /// matrix of another size, or a label that is not finite.
    pub fn replace_labels(&mut self, rows: &[usize], labels: &[f32]) -> Result<()> {
        self.check_rows(rows)?;
        if labels.len() != self.labels.len() {
            return Err(DataError::InvalidDataset(format!(
                "replacement labels hold {} values, the dataset's {}",
                labels.len(),
                self.labels.len()
            )));
        }
        let k = self.task_count();
        for &r in rows {
            let new = &labels[r * k..(r + 1) * k];
            if new.iter().any(|v| !v.is_finite()) {
                return Err(DataError::InvalidDataset(format!(
                    "replacement labels of row {r} are not finite: {new:?}"
                )));
            }
            self.labels[r * k..(r + 1) * k].copy_from_slice(new);
        }
        Ok(())
    }

    /// A new dataset holding the listed rows, in the listed order (a row may
    /// be listed more than once).
    ///
    /// # Panics
    /// If a row index is `>= self.rows()`; see [`Dataset::try_subset`].
    pub fn subset(&self, rows: &[usize]) -> Dataset {
        match self.try_subset(rows) {
            Ok(d) => d,
            Err(e) => panic!("Dataset::subset: {e}"),
        }
    }

    /// [`Dataset::subset`] that returns an error for an out-of-range row index.
    pub fn try_subset(&self, rows: &[usize]) -> Result<Dataset> {
        self.check_rows(rows)?;
        let k = self.task_count();
        Ok(Dataset {
            tasks: self.tasks.clone(),
            sparse: self.sparse.as_ref().map(|s| SparseColumns {
                fields: s.fields.clone(),
                vocab: s.vocab.clone(),
                ids: gather(&s.ids, s.fields.len(), rows),
            }),
            dense: self.dense.as_ref().map(|d| DenseColumns {
                names: d.names.clone(),
                values: gather(&d.values, d.names.len(), rows),
            }),
            labels: gather(&self.labels, k, rows),
            masks: gather(&self.masks, k, rows),
            domains: self.domains.as_ref().map(|d| DomainColumn {
                names: d.names.clone(),
                ids: gather(&d.ids, 1, rows),
            }),
            sequences: self
                .sequences
                .iter()
                .map(|q| SequenceColumn {
                    name: q.name.clone(),
                    max_len: q.max_len,
                    ids: gather(&q.ids, q.max_len, rows),
                    lengths: gather(&q.lengths, 1, rows),
                    vocab: q.vocab,
                    share_with: q.share_with.clone(),
                })
                .collect(),
            weights: self.weights.as_ref().map(|w| gather(w, 1, rows)),
            groups: self.groups.as_ref().map(|g| gather(g, 1, rows)),
            rows: rows.len(),
        })
    }

    /// The same rows with only task `task`'s labels and masks: the data a
    /// one-task model of that task trains on (the single-task baseline's
    /// K independent models, each fed one column of the labels).
    pub fn only_task(&self, task: usize) -> Result<Dataset> {
        let k = self.task_count();
        let Some(info) = self.tasks.get(task) else {
            return Err(DataError::InvalidDataset(format!(
                "task index {task} is out of range: the dataset has {k} tasks"
            )));
        };
        let column = |v: &[f32]| v.iter().skip(task).step_by(k).copied().collect();
        Ok(Dataset {
            tasks: vec![info.clone()],
            labels: column(&self.labels),
            masks: column(&self.masks),
            ..self.clone()
        })
    }

    /// Gathers the listed rows, in order, into tensors on `device`:
    /// sparse `[B, F]` `u32`, dense `[B, N]` `f32`, labels and masks `[B, K]` `f32`.
    /// Sequence columns become `inputs.sequences` (`[B, max_len]` `u32` ids
    /// and the lengths).
    pub fn batch(&self, rows: &[usize], device: &Device) -> Result<Batch> {
        self.check_rows(rows)?;
        let b = rows.len();
        let k = self.task_count();
        let sparse = match &self.sparse {
            Some(s) => {
                let f = s.fields.len();
                Some(Tensor::from_vec(gather(&s.ids, f, rows), (b, f), device)?)
            }
            None => None,
        };
        let dense = match &self.dense {
            Some(d) => {
                let n = d.names.len();
                Some(Tensor::from_vec(gather(&d.values, n, rows), (b, n), device)?)
            }
            None => None,
        };
        let domains = match &self.domains {
            Some(d) => Some(Domains::new(gather(&d.ids, 1, rows), d.names.len(), device)?),
            None => None,
        };
        let sequences = self
            .sequences
            .iter()
            .map(|q| {
                let ids = Tensor::from_vec(gather(&q.ids, q.max_len, rows), (b, q.max_len), device)?;
                Ok(SequenceInput::new(ids, gather(&q.lengths, 1, rows))?)
            })
            .collect::<Result<Vec<_>>>()?;
        let inputs = Inputs::new(sparse, dense, domains)?.with_sequences(sequences)?;
        let labels = Tensor::from_vec(gather(&self.labels, k, rows), (b, k), device)?;
        let masks = Tensor::from_vec(gather(&self.masks, k, rows), (b, k), device)?;
        let weights = match &self.weights {
            Some(w) => Some(Tensor::from_vec(gather(w, 1, rows), b, device)?),
            None => None,
        };
        Ok(Batch {
            inputs,
            labels,
            masks,
            weights,
            groups: self.groups.as_ref().map(|g| gather(g, 1, rows)),
        })
    }

    /// The batches of `order`, taken `batch_size` rows at a time (the last
    /// batch may be shorter). Visits every listed row once, in order; shuffle
    /// `order` (e.g. with [`crate::shuffled`]) for a training epoch.
    /// A `batch_size` of 0 yields one error and nothing else.
    pub fn batches<'a>(
        &'a self,
        order: &'a [usize],
        batch_size: usize,
        device: &Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        let device = device.clone();
        let bad_size = (batch_size == 0).then(|| Err(DataError::setting("batch_size", batch_size, "at least 1")));
        let usable = if batch_size == 0 { &order[..0] } else { order };
        let chunks = usable.chunks(batch_size.max(1));
        bad_size
            .into_iter()
            .chain(chunks.map(move |rows| self.batch(rows, &device)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, kind: TaskKind) -> TaskInfo {
        TaskInfo {
            name: name.into(),
            kind,
        }
    }

    /// 5 rows, 2 sparse fields, 3 dense features, 2 tasks, 2 domains.
    /// Row r: ids [r % 3, r % 4], dense [r, 10r, 100r], labels [r % 2, r/10],
    /// masks [1, r % 2], domain r % 2.
    fn small() -> Dataset {
        let rows = 5;
        let mut ids = Vec::new();
        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut masks = Vec::new();
        let mut dom = Vec::new();
        for r in 0..rows {
            ids.extend([(r % 3) as u32, (r % 4) as u32]);
            let x = r as f32;
            values.extend([x, 10.0 * x, 100.0 * x]);
            labels.extend([(r % 2) as f32, x / 10.0]);
            masks.extend([1.0, (r % 2) as f32]);
            dom.push((r % 2) as u32);
        }
        Dataset::new(
            vec![task("click", TaskKind::Binary), task("time", TaskKind::Regression)],
            Some(SparseColumns {
                fields: vec!["a".into(), "b".into()],
                vocab: vec![3, 4],
                ids,
            }),
            Some(DenseColumns {
                names: vec!["x".into(), "y".into(), "z".into()],
                values,
            }),
            labels,
            masks,
            Some(DomainColumn {
                names: vec!["d0".into(), "d1".into()],
                ids: dom,
            }),
        )
        .expect("valid small dataset")
    }

    fn rebuild(d: Dataset) -> Result<Dataset> {
        Dataset::new(d.tasks, d.sparse, d.dense, d.labels, d.masks, d.domains)
    }

    fn err_text(r: Result<Dataset>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    /// Task 1 ("time") alone: its labels r/10 and masks r % 2, the inputs
    /// and domains untouched.
    #[test]
    fn only_task_keeps_one_label_column() {
        let d = small();
        let t = d.only_task(1).unwrap();
        assert_eq!(t.tasks, vec![task("time", TaskKind::Regression)]);
        assert_eq!(t.labels, [0.0, 0.1, 0.2, 0.3, 0.4]);
        assert_eq!(t.masks, [0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(t.rows(), 5);
        assert_eq!(t.sparse, d.sparse);
        assert_eq!(t.dense, d.dense);
        assert_eq!(t.domains, d.domains);
        let c = d.only_task(0).unwrap();
        assert_eq!(c.labels, [0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(c.masks, [1.0; 5]);
        assert!(rebuild(t).is_ok());
        assert!(err_text(d.only_task(2)).contains("task index 2"));
    }

    #[test]
    fn counts() {
        let d = small();
        assert_eq!(d.rows(), 5);
        assert_eq!(d.task_count(), 2);
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let mut d = small();
        d.masks.pop();
        let msg = err_text(rebuild(d));
        assert!(msg.contains("masks has 9 values"), "{msg}");

        let mut d = small();
        d.labels.push(0.0);
        d.masks.push(1.0);
        let msg = err_text(rebuild(d));
        assert!(msg.contains("not a multiple of the 2 tasks"), "{msg}");

        let mut d = small();
        d.dense.as_mut().expect("dense").values.pop();
        let msg = err_text(rebuild(d));
        assert!(msg.contains("dense values has 14 values"), "{msg}");

        let mut d = small();
        d.sparse.as_mut().expect("sparse").ids.push(0);
        let msg = err_text(rebuild(d));
        assert!(msg.contains("sparse ids has 11 values"), "{msg}");

        let mut d = small();
        d.sparse.as_mut().expect("sparse").vocab.pop();
        let msg = err_text(rebuild(d));
        assert!(msg.contains("2 fields but 1 vocabulary sizes"), "{msg}");

        let mut d = small();
        d.domains.as_mut().expect("domains").ids.pop();
        let msg = err_text(rebuild(d));
        assert!(msg.contains("domain ids has 4 values"), "{msg}");
    }

    #[test]
    fn rejects_id_beyond_vocab() {
        let mut d = small();
        // row 3, field `b` (vocab 4)
        d.sparse.as_mut().expect("sparse").ids[7] = 4;
        let msg = err_text(rebuild(d));
        assert!(
            msg.contains("sparse id 4 of field `b` at row 3 is out of range: vocab is 4"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_domain_out_of_range() {
        let mut d = small();
        d.domains.as_mut().expect("domains").ids[2] = 2;
        let msg = err_text(rebuild(d));
        assert!(
            msg.contains("domain id 2 at row 2 is out of range: there are 2 domains"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_non_binary_label_only_where_masked_in() {
        let mut d = small();
        d.labels[4] = 0.5; // row 2, task `click` (mask 1)
        let msg = err_text(rebuild(d));
        assert!(
            msg.contains("label of binary task `click` at row 2 is 0.5, must be 0 or 1"),
            "{msg}"
        );

        // A masked-out label is ignored, whatever its value.
        let mut d = small();
        d.tasks[1].kind = TaskKind::Binary;
        d.labels[1] = 7.0; // row 0, task `time`: mask 0
        d.labels[3] = 1.0; // row 1 mask 1
        d.labels[7] = 0.0; // row 3 mask 1
        rebuild(d).expect("masked-out labels are not checked");
    }

    #[test]
    fn rejects_bad_mask_and_nan() {
        let mut d = small();
        d.masks[3] = 0.5;
        let msg = err_text(rebuild(d));
        assert!(msg.contains("mask of task `time` at row 1 is 0.5"), "{msg}");

        let mut d = small();
        d.labels[3] = f32::NAN;
        let msg = err_text(rebuild(d));
        assert!(msg.contains("label of task `time` at row 1 is not finite"), "{msg}");

        let mut d = small();
        d.dense.as_mut().expect("dense").values[4] = f32::INFINITY;
        let msg = err_text(rebuild(d));
        assert!(msg.contains("dense feature `y` at row 1 is not finite"), "{msg}");
    }

    #[test]
    fn rejects_no_tasks_duplicate_tasks_no_inputs() {
        let msg = err_text(Dataset::new(vec![], None, None, vec![], vec![], None));
        assert!(msg.contains("at least one task"), "{msg}");

        let mut d = small();
        d.tasks[1].name = "click".into();
        let msg = err_text(rebuild(d));
        assert!(msg.contains("task name `click` appears twice"), "{msg}");

        let mut d = small();
        d.sparse = None;
        d.dense = None;
        d.domains = None;
        let msg = err_text(rebuild(d));
        assert!(msg.contains("at least one input column"), "{msg}");
    }

    #[test]
    fn subset_keeps_given_order() {
        let d = small();
        let s = d.subset(&[4, 1, 3, 1]);
        assert_eq!(s.rows(), 4);
        let ids = &s.sparse.as_ref().expect("sparse").ids;
        assert_eq!(ids, &[1, 0, 1, 1, 0, 3, 1, 1]);
        let dense = &s.dense.as_ref().expect("dense").values;
        assert_eq!(&dense[..3], &[4.0, 40.0, 400.0]);
        assert_eq!(&dense[3..6], &[1.0, 10.0, 100.0]);
        assert_eq!(&dense[6..9], &[3.0, 30.0, 300.0]);
        assert_eq!(s.labels, vec![0.0, 0.4, 1.0, 0.1, 1.0, 0.3, 1.0, 0.1]);
        assert_eq!(s.masks, vec![1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(s.domains.as_ref().expect("domains").ids, vec![0, 1, 1, 1]);
        // Still a valid dataset.
        rebuild(s).expect("subset is valid");
    }

    #[test]
    fn weights_and_groups_are_checked_and_follow_their_rows() {
        let msg = err_text(small().with_weights(vec![1.0; 4]));
        assert!(
            msg.contains("weights has 4 values, expected one per row (5 rows)"),
            "{msg}"
        );
        for bad in [-0.5, f32::NAN, f32::INFINITY] {
            let msg = err_text(small().with_weights(vec![1.0, 1.0, bad, 1.0, 1.0]));
            assert!(
                msg.contains("weight at row 2 is") && msg.contains("finite and >= 0"),
                "{msg}"
            );
        }
        let msg = err_text(small().with_groups(vec![1; 6]));
        assert!(msg.contains("groups has 6 values"), "{msg}");
        let msg = err_text(small().with_groups_from_field("user"));
        assert!(
            msg.contains("group `user` is not a sparse field of the data (sparse fields: a, b)"),
            "{msg}"
        );

        // Field `b` holds r % 4 in row r.
        let d = small()
            .with_weights(vec![0.0, 1.0, 2.0, 3.0, 4.0])
            .unwrap()
            .with_groups_from_field("b")
            .unwrap();
        assert_eq!(d.groups, Some(vec![0, 1, 2, 3, 0]));
        let s = d.subset(&[4, 1]);
        assert_eq!(
            (s.weights.clone(), s.groups.clone()),
            (Some(vec![4.0, 1.0]), Some(vec![0, 1]))
        );
        let mut m = d.empty_like();
        m.push_row(&d, 3);
        m.push_row(&d, 2);
        m.replace_row(0, &d, 1);
        m.push_row(&d, 4);
        m.swap_remove_row(0);
        assert_eq!(
            (m.weights.clone(), m.groups.clone()),
            (Some(vec![4.0, 2.0]), Some(vec![0, 2]))
        );
        let c = Dataset::concat(&[d.subset(&[0]), d.subset(&[3])]).unwrap();
        assert_eq!((c.weights, c.groups), (Some(vec![0.0, 3.0]), Some(vec![0, 3])));
        // Parts with and without weights do not mix.
        assert!(Dataset::concat(&[d.subset(&[0]), small()]).is_err());
    }

    #[test]
    fn subset_out_of_range_is_an_error() {
        let d = small();
        let msg = err_text(d.try_subset(&[0, 5]));
        assert!(msg.contains("row index 5 is out of range"), "{msg}");
    }

    #[test]
    fn batch_shapes_and_values() {
        let d = small();
        let rows = [3, 0, 4];
        let b = d.batch(&rows, &Device::Cpu).expect("batch");
        assert_eq!(b.rows(), 3);
        let sparse = b.inputs.sparse.as_ref().expect("sparse");
        assert_eq!(sparse.dims(), &[3, 2]);
        assert_eq!(
            sparse.to_vec2::<u32>().expect("u32"),
            vec![vec![0, 3], vec![0, 0], vec![1, 0]]
        );
        let dense = b.inputs.dense.as_ref().expect("dense");
        assert_eq!(dense.dims(), &[3, 3]);
        assert_eq!(
            dense.to_vec2::<f32>().expect("f32"),
            vec![vec![3.0, 30.0, 300.0], vec![0.0, 0.0, 0.0], vec![4.0, 40.0, 400.0]]
        );
        assert_eq!(b.labels.dims(), &[3, 2]);
        assert_eq!(
            b.labels.to_vec2::<f32>().expect("f32"),
            vec![vec![1.0, 0.3], vec![0.0, 0.0], vec![0.0, 0.4]]
        );
        assert_eq!(
            b.masks.to_vec2::<f32>().expect("f32"),
            vec![vec![1.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]]
        );
        let domains = b.inputs.domains.as_ref().expect("domains");
        assert_eq!(domains.ids(), &[1, 0, 0]);
        assert_eq!(domains.count(), 2);
    }

    #[test]
    fn batch_carries_sequences_and_features_declare_them() {
        let d = small()
            .with_sequences(vec![SequenceColumn {
                name: "hist".into(),
                max_len: 2,
                ids: vec![1, 2, 0, 0, 2, 0, 1, 1, 0, 0],
                lengths: vec![2, 0, 1, 2, 0],
                vocab: 3,
                share_with: Some("a".into()),
            }])
            .expect("valid sequences");
        let b = d.batch(&[2, 0], &Device::Cpu).expect("batch");
        assert_eq!(b.inputs.sequences.len(), 1);
        let s = &b.inputs.sequences[0];
        assert_eq!(s.ids.to_vec2::<u32>().expect("u32"), vec![vec![2, 0], vec![1, 2]]);
        assert_eq!(s.lengths, vec![1, 2]);
        let f = d.features(4);
        assert_eq!(f.sequences.len(), 1);
        assert_eq!(f.sequences[0].share_with.as_deref(), Some("a"));
        assert_eq!(f.width(), 2 * 4 + 3 + 4);
    }

    #[test]
    fn batch_of_one_row() {
        let d = small();
        let b = d.batch(&[2], &Device::Cpu).expect("batch");
        assert_eq!(b.rows(), 1);
        assert_eq!(b.inputs.sparse.as_ref().expect("sparse").dims(), &[1, 2]);
        assert_eq!(b.inputs.dense.as_ref().expect("dense").dims(), &[1, 3]);
        assert_eq!(b.labels.to_vec2::<f32>().expect("f32"), vec![vec![0.0, 0.2]]);
    }

    #[test]
    fn batch_row_out_of_range_is_an_error() {
        let d = small();
        let msg = match d.batch(&[1, 9], &Device::Cpu) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("row index 9 is out of range: the dataset has 5 rows"),
            "{msg}"
        );
    }

    /// The dense `x` column (= row index) of every batch.
    fn visited(d: &Dataset, order: &[usize], batch_size: usize) -> (Vec<usize>, Vec<usize>) {
        let mut rows = Vec::new();
        let mut sizes = Vec::new();
        for b in d.batches(order, batch_size, &Device::Cpu) {
            let b = b.expect("batch");
            sizes.push(b.rows());
            let dense = b.inputs.dense.as_ref().expect("dense");
            for row in dense.to_vec2::<f32>().expect("f32") {
                rows.push(row[0] as usize);
            }
        }
        (rows, sizes)
    }

    #[test]
    fn batches_cover_every_row_once_in_order() {
        let d = small();
        let order = [2, 4, 0, 3, 1];
        let (rows, sizes) = visited(&d, &order, 2);
        assert_eq!(rows, order.to_vec());
        assert_eq!(sizes, vec![2, 2, 1]);

        let (rows, sizes) = visited(&d, &order, 1);
        assert_eq!(rows, order.to_vec());
        assert_eq!(sizes, vec![1; 5]);

        let (rows, sizes) = visited(&d, &order, 100);
        assert_eq!(rows, order.to_vec());
        assert_eq!(sizes, vec![5]);
    }

    #[test]
    fn batch_size_zero_is_an_error() {
        let d = small();
        let out: Vec<_> = d.batches(&[0, 1], 0, &Device::Cpu).collect();
        assert_eq!(out.len(), 1);
        let msg = match &out[0] {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("`batch_size` = 0"), "{msg}");
    }
}
