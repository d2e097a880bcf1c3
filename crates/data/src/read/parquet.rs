//! Parquet rows through the `parquet` crate's record API (no arrow).
//!
//! Each value becomes the text a CSV file would hold, so that one
//! preprocessor reads both formats alike: null is empty (missing), booleans
//! are `1`/`0`, integers and floats print as Rust prints them (shortest
//! round-trip form), strings as they are, a list's elements are joined with
//! the column's list separator; dates, times and decimals use the parquet
//! crate's text form. Nested groups and maps are an error naming the column.
//! Rows are numbered from 1.

use std::fs::File;
use std::path::{Path, PathBuf};

use csv::StringRecord;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};

use super::{ReadOptions, RowSource};
use crate::error::{DataError, Place, Result};

/// Rows of one Parquet file.
pub struct ParquetSource {
    file: PathBuf,
    columns: Vec<String>,
    /// Per column, the separator its list values are joined with.
    list_separators: Vec<String>,
    rows: RowIter<'static>,
    total: u64,
    row: u64,
    text: String,
}

impl ParquetSource {
    /// Opens the file and reads its metadata (column names, row count).
    pub fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| DataError::input(path, Place::File, None, format!("cannot read as Parquet: {e}")))?;
        let meta = reader.metadata().file_metadata();
        let total = u64::try_from(meta.num_rows()).unwrap_or(0);
        let columns: Vec<String> = meta
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let list_separators = columns
            .iter()
            .map(|c| {
                options
                    .list_separators
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| "|".to_string())
            })
            .collect();
        Ok(Self {
            file: path.to_path_buf(),
            columns,
            list_separators,
            rows: reader.into_iter(),
            total,
            row: 0,
            text: String::new(),
        })
    }

    fn fill(&mut self, row: &Row, record: &mut StringRecord) -> Result<()> {
        record.clear();
        for (i, (name, field)) in row.get_column_iter().enumerate() {
            self.text.clear();
            let sep = self.list_separators.get(i).map_or("|", String::as_str);
            write_field(field, sep, &mut self.text)
                .map_err(|message| DataError::input(&self.file, Place::Row(self.row), Some(name), message))?;
            record.push_field(&self.text);
        }
        Ok(())
    }
}

/// Appends the text form of `field` to `out`.
fn write_field(field: &Field, list_separator: &str, out: &mut String) -> std::result::Result<(), String> {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    fn put(out: &mut String, v: &dyn std::fmt::Display) {
        let _ = write!(out, "{v}");
    }
    match field {
        Field::Null => {}
        Field::Bool(b) => put(out, &u8::from(*b)),
        Field::Byte(v) => put(out, v),
        Field::Short(v) => put(out, v),
        Field::Int(v) => put(out, v),
        Field::Long(v) => put(out, v),
        Field::UByte(v) => put(out, v),
        Field::UShort(v) => put(out, v),
        Field::UInt(v) => put(out, v),
        Field::ULong(v) => put(out, v),
        Field::Float16(v) => put(out, &f32::from(*v)),
        Field::Float(v) => put(out, v),
        Field::Double(v) => put(out, v),
        Field::Str(s) => out.push_str(s),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => out.push_str(s),
            Err(_) => return Err("a binary value that is not UTF-8 text".to_string()),
        },
        Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => put(out, field),
        Field::ListInternal(list) => {
            for (i, e) in list.elements().iter().enumerate() {
                if i > 0 {
                    out.push_str(list_separator);
                }
                if !e.is_primitive() {
                    return Err("a list of nested values (only lists of plain values are read)".to_string());
                }
                write_field(e, list_separator, out)?;
            }
        }
        Field::Group(_) | Field::MapInternal(_) => {
            return Err("a nested group or map value (only plain values and lists are read)".to_string())
        }
    }
    Ok(())
}

impl RowSource for ParquetSource {
    fn file(&self) -> &Path {
        &self.file
    }

    fn columns(&self) -> &[String] {
        &self.columns
    }

    fn header_place(&self) -> Place {
        Place::File
    }

    fn next_row(&mut self, record: &mut StringRecord) -> Result<Option<Place>> {
        match self.rows.next() {
            None => Ok(None),
            Some(Err(e)) => Err(DataError::input(
                &self.file,
                Place::Row(self.row + 1),
                None,
                format!("cannot read the row: {e}"),
            )),
            Some(Ok(row)) => {
                self.row += 1;
                self.fill(&row, record)?;
                Ok(Some(Place::Row(self.row)))
            }
        }
    }

    fn end_place(&self) -> Place {
        Place::Row(self.row + 1)
    }

    fn known_rows(&self) -> Option<u64> {
        Some(self.total)
    }
}
