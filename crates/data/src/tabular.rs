//! Loading a tabular data set described by a [`TabularSchema`]: fit the
//! preprocessing on the training rows, then encode every part.
//!
//! Two layouts:
//! - `train`, `valid`, `test` files: [`load_tabular`] fits on the train file
//!   (one pass) and encodes each file (one pass each);
//! - one `path`: [`load_single`] counts the rows (Parquet: from the metadata,
//!   CSV: one pass), draws the seeded [`split`](crate::split()) of them, fits
//!   on the train part only (one pass over the file, other rows skipped),
//!   and encodes the whole file (one pass).
//!
//! [`load_split`] takes either layout and returns one dataset and a split,
//! as the runner's data sources do.

use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{DataError, Place, Result};
use crate::preprocess::{
    Fitting, Labels, MergeCounts, Pass, Preprocessor, ProgressFn, Reporter, RowFilter, PROGRESS_EVERY,
};
use crate::read;
use crate::schema::{DataFiles, TabularSchema, TaskSpec};
use crate::shard::Stripe;
use crate::split::{split, Split};

/// The three parts of a data set given as three files, and the
/// preprocessing fitted on the train file.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Dataset,
    pub preprocessor: Preprocessor,
}

/// One data set, a split of its rows, and the preprocessing fitted on the
/// split's train rows.
#[derive(Clone, Debug)]
pub struct LoadedSingle {
    pub data: Dataset,
    pub split: Split,
    pub preprocessor: Preprocessor,
    /// Read as one [`ShardRead`] of several: the number of training rows of
    /// every part (this reader's `data` holds only its own part's training
    /// rows, and every validation and test row). `None`: all rows read.
    pub train_parts: Option<Vec<usize>>,
}

/// How one reader of several (a rank of a data-parallel run) reads a data
/// set: it encodes and keeps only its [`Stripe`] of the training rows (the
/// validation and test rows whole), and fits the preprocessing on its own
/// training rows with `merge` adding the other readers' counts, so that
/// every reader forms the preprocessing of all training rows.
#[derive(Clone, Copy)]
pub struct ShardRead<'a> {
    pub stripe: Stripe,
    pub merge: MergeCounts<'a>,
}

impl std::fmt::Debug for ShardRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRead").field("stripe", &self.stripe).finish()
    }
}

impl Loaded {
    /// The three parts as one dataset (train rows, then valid, then test,
    /// each in file order) and the split that names them (each part in file
    /// order: shuffle for training, as with any split).
    pub fn combined(self) -> Result<LoadedSingle> {
        let (a, b, c) = (self.train.rows(), self.valid.rows(), self.test.rows());
        let data = Dataset::concat(&[self.train, self.valid, self.test])?;
        Ok(LoadedSingle {
            data,
            split: Split {
                train: (0..a).collect(),
                valid: (a..a + b).collect(),
                test: (a + b..a + b + c).collect(),
            },
            preprocessor: self.preprocessor,
            train_parts: None,
        })
    }
}

/// Reads `train`, `valid` and `test` files: fits on train, encodes each.
/// Errors when the schema gives one `path` instead (see [`load_single`]).
pub fn load_tabular(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    progress: ProgressFn<'_>,
) -> Result<Loaded> {
    load_tabular_fitted(schema, tasks, base, Fitting::Fresh, progress)
}

/// [`load_tabular`] with the preprocessing obtained as `fitting` says (a
/// trained run's, kept or grown: warm start).
pub fn load_tabular_fitted(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    fitting: Fitting<'_>,
    progress: ProgressFn<'_>,
) -> Result<Loaded> {
    let (train, valid, test) = match schema.resolve(base)? {
        DataFiles::Separate { train, valid, test } => (train, valid, test),
        DataFiles::Single { .. } => {
            return Err(DataError::schema(
                "this data set is one `path`: load it with a split (load_single / load_split)",
            ))
        }
    };
    let mut reporter = Reporter::new(progress);
    let pre = fitting.fit(schema, tasks, &train, None, &mut reporter)?;
    let train = pre.encode_with(&train, Labels::Required, &mut reporter)?;
    let valid = pre.encode_with(&valid, Labels::Required, &mut reporter)?;
    let test = pre.encode_with(&test, Labels::Required, &mut reporter)?;
    Ok(Loaded {
        train,
        valid,
        test,
        preprocessor: pre,
    })
}

/// Counts the data rows of a file (Parquet: from its metadata).
pub fn count_rows(path: &Path, schema: &TabularSchema, progress: ProgressFn<'_>) -> Result<u64> {
    let mut reporter = Reporter::new(progress);
    count_with(path, &read::ReadOptions::of(schema), &mut reporter)
}

fn count_with(path: &Path, options: &read::ReadOptions, reporter: &mut Reporter<'_>) -> Result<u64> {
    let mut src = read::open(path, options)?;
    if let Some(n) = src.known_rows() {
        reporter.report(Pass::Count, path, n, Some(n));
        return Ok(n);
    }
    let mut record = csv::StringRecord::new();
    let mut n = 0u64;
    while src.next_row(&mut record)?.is_some() {
        n += 1;
        if n % PROGRESS_EVERY == 0 {
            reporter.report(Pass::Count, path, n, None);
        }
    }
    reporter.report(Pass::Count, path, n, Some(n));
    Ok(n)
}

/// Reads one `path`: splits its rows by `fractions` and `seed` (as
/// [`split`](crate::split())), fits on the train rows only, encodes all rows.
/// Errors when the schema gives `train`/`valid`/`test` instead.
pub fn load_single(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    fractions: [f64; 3],
    seed: u64,
    progress: ProgressFn<'_>,
) -> Result<LoadedSingle> {
    load_single_fitted(schema, tasks, base, fractions, seed, Fitting::Fresh, None, progress)
}

#[allow(clippy::too_many_arguments)]
fn load_single_fitted(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    fractions: [f64; 3],
    seed: u64,
    fitting: Fitting<'_>,
    shard: Option<ShardRead<'_>>,
    progress: ProgressFn<'_>,
) -> Result<LoadedSingle> {
    let path = match schema.resolve(base)? {
        DataFiles::Single { path } => path,
        DataFiles::Separate { .. } => {
            return Err(DataError::schema(
                "this data set is `train`, `valid` and `test` files: load it with load_tabular",
            ))
        }
    };
    schema.check(tasks)?;
    let mut reporter = Reporter::new(progress);
    let n = count_with(&path, &read::ReadOptions::of(schema), &mut reporter)?;
    if n == 0 {
        return Err(DataError::input(&path, Place::File, None, "no data rows"));
    }
    let rows = usize::try_from(n).map_err(|_| DataError::input(&path, Place::File, None, "too many rows"))?;
    let split = split(rows, fractions, seed)?;
    let mut is_train = vec![false; rows];
    for &i in &split.train {
        is_train[i] = true;
    }
    let stripe = shard.map_or(Stripe::WHOLE, |s| s.stripe);
    let train_at = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| is_train.get(i))
            .copied()
            .unwrap_or(false)
    };
    let select = |i: u64| train_at(i) && stripe.holds(i);
    let pre = fitting.fit_merged(
        schema,
        tasks,
        &path,
        Some(&select),
        shard.map(|s| s.merge),
        &mut reporter,
    )?;
    if shard.is_none() {
        let data = pre.encode_with(&path, Labels::Required, &mut reporter)?;
        if data.rows() != rows {
            return Err(changed(&path, rows, data.rows()));
        }
        return Ok(LoadedSingle {
            data,
            split,
            preprocessor: pre,
            train_parts: None,
        });
    }
    // This reader keeps its stripe of the training rows and every other
    // row; `local[i]` is file row i's index among the kept rows.
    let is_train = std::sync::Arc::new(is_train);
    let keep = {
        let is_train = std::sync::Arc::clone(&is_train);
        move |i: u64| {
            !usize::try_from(i)
                .ok()
                .and_then(|i| is_train.get(i))
                .copied()
                .unwrap_or(false)
                || stripe.holds(i)
        }
    };
    let mut local = vec![u32::MAX; rows];
    let mut kept = 0usize;
    for (i, l) in local.iter_mut().enumerate() {
        if keep(i as u64) {
            *l = u32::try_from(kept).map_err(|_| DataError::input(&path, Place::File, None, "too many rows"))?;
            kept += 1;
        }
    }
    let filter: RowFilter = std::sync::Arc::new(keep);
    let (data, read) = pre.encode_filtered(&path, Labels::Required, Some(filter), &mut reporter)?;
    if read != n || data.rows() != kept {
        return Err(changed(&path, rows, usize::try_from(read).unwrap_or(usize::MAX)));
    }
    let count = stripe.count();
    let mut parts = vec![0usize; count];
    for &i in &split.train {
        parts[i % count] += 1;
    }
    // The split's rows in the same order, as indices of the kept rows.
    let here = |rows: &[usize], train: bool| -> Vec<usize> {
        rows.iter()
            .filter(|&&i| !train || stripe.holds(i as u64))
            .map(|&i| local[i] as usize)
            .collect()
    };
    let split = Split {
        train: here(&split.train, true),
        valid: here(&split.valid, false),
        test: here(&split.test, false),
    };
    Ok(LoadedSingle {
        data,
        split,
        preprocessor: pre,
        train_parts: Some(parts),
    })
}

fn changed(path: &Path, rows: usize, now: usize) -> DataError {
    DataError::input(
        path,
        Place::File,
        None,
        format!("the file changed while being read: {rows} rows, then {now}"),
    )
}

/// Either layout as one dataset and a split: [`load_single`] for one `path`
/// (using `fractions` and `seed`), [`load_tabular`] then
/// [`Loaded::combined`] for three files (ignoring them).
pub fn load_split(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    fractions: [f64; 3],
    seed: u64,
    progress: ProgressFn<'_>,
) -> Result<LoadedSingle> {
    load_split_sharded(schema, tasks, base, fractions, seed, Fitting::Fresh, None, progress)
}

/// [`load_split`] with the preprocessing obtained as `fitting` says (a
/// trained run's, kept or grown: warm start), and read by one reader of
/// several ([`ShardRead`]: a rank of a data-parallel run) when `shard` is
/// given: only its stripe of the
/// training rows is encoded and kept (the stripe of the train file's rows,
/// or of the one `path`'s training rows: file row i goes to part i mod
/// parts), validation and test rows whole; the preprocessing is fitted on
/// all readers' training rows. The split is of the rows kept.
#[allow(clippy::too_many_arguments)]
pub fn load_split_sharded(
    schema: &TabularSchema,
    tasks: &[TaskSpec],
    base: Option<&Path>,
    fractions: [f64; 3],
    seed: u64,
    fitting: Fitting<'_>,
    shard: Option<ShardRead<'_>>,
    progress: ProgressFn<'_>,
) -> Result<LoadedSingle> {
    match (schema.resolve(base)?, shard) {
        (DataFiles::Single { .. }, _) => {
            load_single_fitted(schema, tasks, base, fractions, seed, fitting, shard, progress)
        }
        (DataFiles::Separate { .. }, None) => load_tabular_fitted(schema, tasks, base, fitting, progress)?.combined(),
        (DataFiles::Separate { train, valid, test }, Some(shard)) => {
            let mut reporter = Reporter::new(progress);
            let stripe = shard.stripe;
            let select = move |i: u64| stripe.holds(i);
            let pre = fitting.fit_merged(schema, tasks, &train, Some(&select), Some(shard.merge), &mut reporter)?;
            let filter: RowFilter = std::sync::Arc::new(select);
            let (train, read) = pre.encode_filtered(&train, Labels::Required, Some(filter), &mut reporter)?;
            let valid = pre.encode_with(&valid, Labels::Required, &mut reporter)?;
            let test = pre.encode_with(&test, Labels::Required, &mut reporter)?;
            let count = stripe.count() as u64;
            let parts = (0..count)
                .map(|p| Stripe::rows_of_part(read, p, count) as usize)
                .collect();
            let mut loaded = Loaded {
                train,
                valid,
                test,
                preprocessor: pre,
            }
            .combined()?;
            loaded.train_parts = Some(parts);
            Ok(loaded)
        }
    }
}
