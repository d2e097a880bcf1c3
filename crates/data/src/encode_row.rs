//! Rows given as column values, not read from a file (the instances of a
//! served request), encoded with a fitted [`Preprocessor`] through the very
//! binding and row encoding a file's rows go through: a served row and the
//! same row in a file become the same ids and values (no train/serve skew).
//!
//! The caller lays each row out as a record of text fields in the order of
//! [`Preprocessor::input_columns`], as the training file held them
//! (numbers as text, a sequence joined with its separator, a missing value
//! as one of the `missing` markers). Labels are not read: every task's mask
//! is 0.

use std::path::{Path, PathBuf};

pub use csv::StringRecord;

use crate::dataset::Dataset;
use crate::error::{Place, Result};
use crate::preprocess::{Labels, Preprocessor};
use crate::read::RowSource;
use crate::schema::Separator;

/// What an input column feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// A categorical value (vocabulary or hashing).
    Sparse,
    /// A number (filled when missing, then scaled).
    Dense,
    /// Tokens joined by the sequence's separator.
    Sequence,
    /// The row's domain (an unseen one is an error).
    Domain,
}

/// One column a row must give.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputColumn {
    pub name: String,
    pub kind: ColumnKind,
}

/// Records held in memory, as a row source: row `i` (0-based) is at
/// `Place::Row(i + 1)` in errors, which name `source` as the file.
struct MemoryRows {
    source: PathBuf,
    columns: Vec<String>,
    trim: bool,
    rows: std::vec::IntoIter<StringRecord>,
    read: u64,
}

impl RowSource for MemoryRows {
    fn file(&self) -> &Path {
        &self.source
    }
    fn columns(&self) -> &[String] {
        &self.columns
    }
    fn header_place(&self) -> Place {
        Place::File
    }
    fn next_row(&mut self, record: &mut StringRecord) -> Result<Option<Place>> {
        match self.rows.next() {
            Some(r) => {
                *record = r;
                self.read += 1;
                Ok(Some(Place::Row(self.read)))
            }
            None => Ok(None),
        }
    }
    fn trims(&self) -> bool {
        self.trim
    }
    fn end_place(&self) -> Place {
        Place::Row(self.read + 1)
    }
}

impl Preprocessor {
    /// The columns that reach the model, each once, in the order a record
    /// given to [`Preprocessor::encode_records`] holds them: sparse fields,
    /// dense fields, sequences, then the domain column.
    pub fn input_columns(&self) -> Vec<InputColumn> {
        let all = self
            .sparse
            .iter()
            .map(|f| (&f.name, ColumnKind::Sparse))
            .chain(self.dense.iter().map(|f| (&f.name, ColumnKind::Dense)))
            .chain(self.sequences.iter().map(|q| (&q.name, ColumnKind::Sequence)))
            .chain(self.domain.iter().map(|d| (&d.column, ColumnKind::Domain)));
        let mut out: Vec<InputColumn> = Vec::new();
        for (name, kind) in all {
            if !out.iter().any(|c| &c.name == name) {
                out.push(InputColumn {
                    name: name.clone(),
                    kind,
                });
            }
        }
        out
    }

    /// Columns a training row held that do not reach the model: the tasks'
    /// label and mask columns and the ignored ones (a served row may carry
    /// them; they are not read).
    pub fn passive_columns(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tasks
            .iter()
            .flat_map(|t| std::iter::once(&t.label.column).chain(t.mask.as_ref().map(|m| &m.column)))
            .chain(&self.ignore)
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the training files' values were read trimmed (the `", "`
    /// separator): values given in memory are then trimmed too.
    pub fn trims_values(&self) -> bool {
        self.read.separator == Separator::CommaSpace
    }

    /// Encodes `records` (one text field per [`Preprocessor::input_columns`]
    /// entry, in that order) as a file's rows would be, labels absent. An
    /// error is a [`crate::DataError::Input`] naming `source`, the row as
    /// `Place::Row(i + 1)` for `records[i]`, and the column.
    pub fn encode_records(&self, source: &Path, records: Vec<StringRecord>) -> Result<Dataset> {
        let rows = MemoryRows {
            source: source.to_path_buf(),
            columns: self.input_columns().into_iter().map(|c| c.name).collect(),
            trim: self.trims_values(),
            rows: records.into_iter(),
            read: 0,
        };
        self.encode_source(Box::new(rows), Labels::Optional)
    }
}
