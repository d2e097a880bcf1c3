//! A file's columns bound to the fitted fields, and rows encoded into a
//! `Dataset` (whole files, or rows handed over by a serving request).

use std::collections::HashMap;
use std::path::Path;

use csv::StringRecord;
use mtrec_core::TaskKind;

use crate::dataset::{Dataset, DenseColumns, DomainColumn, SequenceColumn, SparseColumns};
use crate::error::{DataError, Place, Result};
use crate::read::RowSource;

use super::vocab::stable_hash;
use super::{
    parse_number, Cond, EncodeChunks, Encoding, FittedSequence, Labels, Pass, PreRef, Preprocessor, Progress,
    ProgressFn, RowFilter,
};

/// Calls the user's callback, if any.
pub(crate) struct Reporter<'a> {
    pub(super) f: Option<&'a mut dyn FnMut(&Progress<'_>)>,
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
pub(super) struct Binding {
    pub(super) width: usize,
    /// Values are read trimmed.
    pub(super) trim: bool,
    pub(super) columns: Vec<String>,
    pub(super) sparse: Vec<usize>,
    pub(super) dense: Vec<usize>,
    pub(super) sequences: Vec<usize>,
    pub(super) domain: Option<usize>,
    /// Present when the labels are read (training, evaluation).
    pub(super) group: Option<usize>,
    pub(super) weight: Option<usize>,
    /// Per task; `None` when absent and labels are optional.
    pub(super) labels: Vec<Option<usize>>,
    pub(super) masks: Vec<Option<Option<usize>>>,
}

impl Binding {
    /// The text of field `i` (trimmed when the reader says so).
    pub(super) fn value<'r>(&self, record: &'r StringRecord, i: usize) -> &'r str {
        let v = record.get(i).unwrap_or("");
        if self.trim {
            v.trim()
        } else {
            v
        }
    }
}

/// The columns of a dataset being built.
pub(super) struct Builder {
    pub(super) rows: usize,
    pub(super) sparse: Vec<u32>,
    pub(super) dense: Vec<f32>,
    pub(super) labels: Vec<f32>,
    pub(super) masks: Vec<f32>,
    pub(super) domains: Vec<u32>,
    pub(super) groups: Vec<u64>,
    pub(super) weights: Vec<f32>,
    pub(super) seq_ids: Vec<Vec<u32>>,
    pub(super) seq_lengths: Vec<Vec<u32>>,
}

impl Builder {
    pub(super) fn new(pre: &Preprocessor) -> Self {
        Self {
            rows: 0,
            sparse: Vec::new(),
            dense: Vec::new(),
            labels: Vec::new(),
            masks: Vec::new(),
            domains: Vec::new(),
            groups: Vec::new(),
            weights: Vec::new(),
            seq_ids: vec![Vec::new(); pre.sequences.len()],
            seq_lengths: vec![Vec::new(); pre.sequences.len()],
        }
    }

    pub(super) fn finish(self, pre: &Preprocessor) -> Result<Dataset> {
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
        let mut data = Dataset::new(pre.task_infos(), sparse, dense, self.labels, self.masks, domains)?
            .with_sequences(sequences)?;
        // Without labels (prediction) neither column is read.
        if pre.group.is_some() && self.groups.len() == self.rows {
            data = data.with_groups(self.groups)?;
        }
        if pre.weight.is_some() && self.weights.len() == self.rows {
            data = data.with_weights(self.weights)?;
        }
        Ok(data)
    }
}

/// Lists names for a message, at most 60 of them.
pub(super) fn name_list(names: &[String]) -> String {
    let mut out: Vec<String> = names.iter().take(60).map(|n| format!("`{n}`")).collect();
    if names.len() > 60 {
        out.push(format!("... ({} in all)", names.len()));
    }
    out.join(", ")
}

impl Preprocessor {
    pub(super) fn err(&self, file: &Path, place: Place, column: &str, message: impl Into<String>) -> DataError {
        DataError::input(file, place, Some(column), message)
    }

    pub(super) fn is_missing(&self, value: &str) -> bool {
        self.read.missing.iter().any(|m| m == value)
    }

    /// A dense field's raw value: `None` when missing (or NaN).
    pub(super) fn dense_raw(&self, value: &str) -> std::result::Result<Option<f64>, String> {
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
    pub(super) fn tokens<'v>(&'v self, q: &'v FittedSequence, value: &'v str) -> impl Iterator<Item = &'v str> + 'v {
        let missing = self.is_missing(value);
        value
            .split(q.separator.as_str())
            .map(str::trim)
            .filter(move |t| !missing && !t.is_empty() && !self.is_missing(t))
    }

    /// The encoding a sequence's tokens use (its own or the shared field's).
    pub(super) fn sequence_encoding<'s>(&'s self, q: &'s FittedSequence) -> Option<&'s Encoding> {
        match &q.share_with {
            Some(s) => self.sparse.iter().find(|f| &f.name == s).map(|f| &f.encoding),
            None => q.encoding.as_ref(),
        }
    }

    pub(super) fn sequence_vocab(&self, q: &FittedSequence) -> usize {
        self.sequence_encoding(q).map_or(1, Encoding::size)
    }

    /// Finds the preprocessor's columns in a file; errors name the missing,
    /// duplicated or unused columns.
    pub(super) fn bind(&self, src: &dyn RowSource, labels: Labels) -> Result<Binding> {
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
        // Read with the labels only; without them (prediction) a file may
        // still have the column, which is then known, not unused.
        let mut extra = |column: &Option<String>, role: &str| match column {
            Some(c) => find(c, role, required).map(|at| at.filter(|_| required)),
            None => Ok(None),
        };
        let group = extra(&self.group, "group")?;
        let weight = extra(&self.weight, "weight")?;
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
            group,
            weight,
            labels: label_cols,
            masks: mask_cols,
        })
    }

    pub(super) fn check_width(&self, bind: &Binding, record: &StringRecord, file: &Path, place: Place) -> Result<()> {
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
    pub(super) fn encode_row(
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
        if let (Some(name), Some(col)) = (&self.group, bind.group) {
            let v = get(col);
            if self.is_missing(v) {
                return Err(self.err(file, place, name, "the group is missing (GAUC needs every row's group)"));
            }
            out.groups.push(stable_hash(v));
        }
        if let (Some(name), Some(col)) = (&self.weight, bind.weight) {
            let v = get(col);
            let w = match self.dense_raw(v) {
                Ok(Some(w)) if w >= 0.0 && (w as f32).is_finite() => w as f32,
                Ok(Some(w)) => return Err(self.err(file, place, name, format!("weight {w} must be finite and >= 0"))),
                Ok(None) => return Err(self.err(file, place, name, "the weight is missing")),
                Err(m) => return Err(self.err(file, place, name, format!("weight: {m}"))),
            };
            out.weights.push(w);
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
}

impl Preprocessor {
    /// Reads every row of `path` into a dataset.
    pub fn encode_file(&self, path: &Path, labels: Labels, progress: ProgressFn<'_>) -> Result<Dataset> {
        let mut reporter = Reporter::new(progress);
        self.encode_with(path, labels, &mut reporter)
    }

    pub(crate) fn encode_with(&self, path: &Path, labels: Labels, reporter: &mut Reporter<'_>) -> Result<Dataset> {
        self.encode_filtered(path, labels, None, reporter).map(|(data, _)| data)
    }

    /// The rows of `path` that `filter` holds (all without one) as one
    /// dataset, and the number of rows the file has.
    pub(crate) fn encode_filtered(
        &self,
        path: &Path,
        labels: Labels,
        filter: Option<RowFilter>,
        reporter: &mut Reporter<'_>,
    ) -> Result<(Dataset, u64)> {
        let mut chunks = EncodeChunks::new(PreRef::Borrowed(self), path, usize::MAX, labels);
        if let Some(f) = filter {
            chunks = chunks.filter(f);
        }
        chunks.take_error()?;
        match chunks.read_chunk(reporter)? {
            Some(data) => Ok((data, chunks.read)),
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
}
