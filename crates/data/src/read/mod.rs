//! Streaming row readers: CSV (optionally gzip-compressed) and Parquet.
//!
//! Both hand out rows as `csv::StringRecord`s of text fields, one per file
//! column, with their place in the file (CSV line or Parquet row) for error
//! messages; the preprocessor reads values from the text. A Parquet value is
//! turned into the text a CSV file would hold (see [`parquet`]).

pub mod csv;
pub mod parquet;

use std::collections::BTreeMap;
use std::path::Path;

use ::csv::StringRecord;
use serde::{Deserialize, Serialize};

use crate::error::{Place, Result};
use crate::schema::{FileFormat, Separator, TabularSchema};

/// How files are read: the reading part of a [`TabularSchema`], kept in the
/// fitted preprocessor so that later files are read the same way.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    /// The format of files whose extension does not say.
    pub format: Option<FileFormat>,
    pub header: bool,
    pub columns: Option<Vec<String>>,
    pub separator: Separator,
    pub missing: Vec<String>,
    /// Parquet: list values of these columns are joined with the given
    /// separator (a sequence field's), others with `|`.
    pub list_separators: BTreeMap<String, String>,
}

impl ReadOptions {
    pub fn of(schema: &TabularSchema) -> Self {
        Self {
            format: schema.source,
            header: schema.header,
            columns: schema.columns.clone(),
            separator: schema.separator.clone(),
            missing: schema.missing.clone(),
            list_separators: schema
                .sequence
                .iter()
                .map(|s| (s.name.clone(), s.separator.clone()))
                .collect(),
        }
    }
}

/// A source of rows: the file's column names, then its rows.
pub trait RowSource: Send {
    /// The file being read.
    fn file(&self) -> &Path;
    /// The column names, in file order.
    fn columns(&self) -> &[String];
    /// Where the column names come from (for a missing-column error).
    fn header_place(&self) -> Place;
    /// Reads the next row into `record`; its place, or `None` at the end.
    fn next_row(&mut self, record: &mut StringRecord) -> Result<Option<Place>>;
    /// Whether the reader of a field must trim surrounding whitespace (the
    /// `", "` separator: trimming only the fields used is much cheaper than
    /// having the CSV parser rebuild every record).
    fn trims(&self) -> bool {
        false
    }
    /// The place just past the last row (for an empty-file error).
    fn end_place(&self) -> Place;
    /// The number of rows, when the file says it without being read.
    fn known_rows(&self) -> Option<u64> {
        None
    }
}

/// Opens `path` for reading, choosing the reader by
/// [`FileFormat::of`]`(path, options.format)`.
pub fn open(path: &Path, options: &ReadOptions) -> Result<Box<dyn RowSource>> {
    match FileFormat::of(path, options.format) {
        FileFormat::Csv => Ok(Box::new(csv::CsvSource::open(path, options)?)),
        FileFormat::Parquet => Ok(Box::new(parquet::ParquetSource::open(path, options)?)),
    }
}
