//! Preprocessing for a trained model continued on new files (warm start):
//! the trained run's fitted state kept as it is, or with its vocabularies
//! grown by the values first seen in the new training rows.
//!
//! Growing appends: a value the trained vocabulary holds keeps its id, a
//! new value (counted at least `min_count` times in the new rows) gets the
//! next id, most frequent first as in a fresh fit. Hashed fields, dense
//! statistics, domains and task rules stay as trained: the model's input
//! must mean what it meant in training. A domain absent from the trained
//! run is an error when a row holds it, as for any unseen domain.

use std::path::Path;

use super::fit::MergeCounts;
use super::vocab::{Encoding, Vocab};
use super::{Preprocessor, Reporter};
use crate::error::{DataError, Result};
use crate::schema::{TabularSchema, TaskSpec};

/// How the preprocessing of a data set is obtained.
#[derive(Clone, Copy, Debug, Default)]
pub enum Fitting<'a> {
    /// Fitted on the training rows (a new run).
    #[default]
    Fresh,
    /// A trained run's state, unchanged.
    Keep(&'a Preprocessor),
    /// A trained run's state, its vocabularies grown with the values first
    /// seen in the training rows.
    Grow(&'a Preprocessor),
}

impl Fitting<'_> {
    /// The preprocessing for `schema` and `tasks` over the rows of `file`
    /// that `select` keeps (the training rows).
    pub(crate) fn fit(
        &self,
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        file: &Path,
        select: Option<&dyn Fn(u64) -> bool>,
        reporter: &mut Reporter<'_>,
    ) -> Result<Preprocessor> {
        self.fit_merged(schema, tasks, file, select, None, reporter)
    }

    /// [`Fitting::fit`] on this reader's rows of several readers' (a
    /// data-parallel run's ranks): `merge` adds the others' counts.
    pub(crate) fn fit_merged(
        &self,
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        file: &Path,
        select: Option<&dyn Fn(u64) -> bool>,
        merge: Option<MergeCounts<'_>>,
        reporter: &mut Reporter<'_>,
    ) -> Result<Preprocessor> {
        match self {
            Fitting::Fresh => Preprocessor::fit_merged(schema, tasks, file, select, merge, reporter),
            Fitting::Keep(trained) => {
                trained.check_plan(&Preprocessor::plan(schema, tasks)?)?;
                Ok((*trained).clone())
            }
            Fitting::Grow(trained) => {
                let fresh = Preprocessor::fit_merged(schema, tasks, file, select, merge, reporter)?;
                trained.check_plan(&fresh)?;
                Ok(trained.grown(&fresh))
            }
        }
    }
}

fn differs(what: String) -> DataError {
    DataError::schema(format!(
        "the config's [data] / [[tasks]] differ from the trained run's: {what}; continue a trained model with its own columns, encodings and tasks"
    ))
}

impl Preprocessor {
    /// Whether `plan` (the config's schema, fitted or not) has this state's
    /// columns, encodings and tasks, in the same order.
    fn check_plan(&self, plan: &Preprocessor) -> Result<()> {
        let names = |p: &Preprocessor| -> Vec<String> {
            p.sparse
                .iter()
                .map(|f| match &f.encoding {
                    Encoding::Hash { buckets } => format!("{} (hashed, {buckets} buckets, width {})", f.name, f.dim),
                    Encoding::Vocab { .. } => format!("{} (vocabulary, width {})", f.name, f.dim),
                })
                .collect()
        };
        let (have, want) = (names(self), names(plan));
        if have != want {
            return Err(differs(format!("sparse fields {want:?}, trained {have:?}")));
        }
        let dense = |p: &Preprocessor| -> Vec<String> {
            p.dense
                .iter()
                .map(|f| format!("{} ({:?})", f.name, f.scaling))
                .collect()
        };
        if dense(self) != dense(plan) {
            return Err(differs(format!(
                "dense fields {:?}, trained {:?}",
                dense(plan),
                dense(self)
            )));
        }
        let seqs = |p: &Preprocessor| -> Vec<String> {
            p.sequences
                .iter()
                .map(|s| format!("{} (width {}, shares {:?})", s.name, s.dim, s.share_with))
                .collect()
        };
        if seqs(self) != seqs(plan) {
            return Err(differs(format!("sequences {:?}, trained {:?}", seqs(plan), seqs(self))));
        }
        let domain = |p: &Preprocessor| p.domain.as_ref().map(|d| d.column.clone());
        if domain(self) != domain(plan) {
            return Err(differs(format!(
                "domain column {:?}, trained {:?}",
                domain(plan),
                domain(self)
            )));
        }
        let tasks = |p: &Preprocessor| -> Vec<String> {
            p.tasks.iter().map(|t| format!("{} ({:?})", t.name, t.kind)).collect()
        };
        if tasks(self) != tasks(plan) {
            return Err(differs(format!("tasks {:?}, trained {:?}", tasks(plan), tasks(self))));
        }
        Ok(())
    }

    /// This state with every vocabulary grown by `fresh`'s values it does
    /// not hold (see the module docs). `fresh` has the same plan.
    pub fn grown(&self, fresh: &Preprocessor) -> Preprocessor {
        let mut out = self.clone();
        for (f, new) in out.sparse.iter_mut().zip(&fresh.sparse) {
            grow(&mut f.encoding, &new.encoding);
        }
        for (s, new) in out.sequences.iter_mut().zip(&fresh.sequences) {
            if let (Some(e), Some(n)) = (s.encoding.as_mut(), new.encoding.as_ref()) {
                grow(e, n);
            }
        }
        out.train_rows += fresh.train_rows;
        out
    }
}

fn grow(have: &mut Encoding, seen: &Encoding) {
    if let (Encoding::Vocab { vocab }, Encoding::Vocab { vocab: new }) = (have, seen) {
        vocab.append_unseen(new);
    }
}

impl Vocab {
    /// Appends `other`'s values this vocabulary lacks, in `other`'s id
    /// order, with their counts; existing ids are untouched.
    pub(super) fn append_unseen(&mut self, other: &Vocab) {
        for (v, &c) in other.values.iter().zip(&other.counts) {
            if !self.index.contains_key(v) {
                self.values.push(v.clone());
                self.counts.push(c);
                self.index.insert(v.clone(), self.values.len() as u32);
            }
        }
    }
}
