//! CSV rows: the `csv` crate over a plain or gzip (`.gz`, through
//! `flate2::read::MultiGzDecoder`) stream, one pass, one record buffer.
//!
//! Lines are counted from 1 with the header as line 1; blank lines are
//! skipped. A single ASCII separator is a CSV delimiter (with `"` quoting);
//! `", "` is `,` with every field trimmed; a non-ASCII separator splits each
//! line on it, without quoting.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use csv::StringRecord;
use flate2::read::MultiGzDecoder;

use super::{ReadOptions, RowSource};
use crate::error::{DataError, Place, Result};
use crate::schema::Separator;

enum Inner {
    Csv(csv::Reader<Box<dyn Read + Send>>),
    Lines {
        reader: Box<dyn BufRead + Send>,
        separator: char,
        buf: String,
    },
}

/// Rows of one CSV file.
pub struct CsvSource {
    /// Whether fields are to be read trimmed (`", "`).
    trim: bool,
    file: PathBuf,
    columns: Vec<String>,
    header_place: Place,
    inner: Inner,
    /// The last line of the last record read (0 before the first).
    line: u64,
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Opens `path` as a byte stream, decompressing `.gz` files.
pub fn open_stream(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let buffered = BufReader::with_capacity(1 << 16, file);
    if is_gzip(path) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(buffered),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

fn strip_line_end(buf: &mut String) {
    while buf.ends_with('\n') || buf.ends_with('\r') {
        buf.pop();
    }
}

impl CsvSource {
    /// Opens the file and reads its header (when `options.header`).
    pub fn open(path: &Path, options: &ReadOptions) -> Result<Self> {
        let stream = open_stream(path)?;
        let inner = match &options.separator {
            Separator::Char(c) => Inner::Lines {
                reader: stream,
                separator: *c,
                buf: String::new(),
            },
            sep => {
                let (delimiter, trim) = match sep {
                    // Trimmed lazily, only the fields used (see `trims`).
                    Separator::CommaSpace => (b',', csv::Trim::Headers),
                    Separator::Byte(b) => (*b, csv::Trim::None),
                    Separator::Char(_) => (b',', csv::Trim::None), // handled above
                };
                let reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .delimiter(delimiter)
                    .trim(trim)
                    .from_reader(Box::new(stream) as Box<dyn Read + Send>);
                Inner::Csv(reader)
            }
        };
        let mut source = CsvSource {
            trim: options.separator == Separator::CommaSpace,
            file: path.to_path_buf(),
            columns: Vec::new(),
            header_place: Place::File,
            inner,
            line: 0,
        };
        if options.header {
            let mut record = StringRecord::new();
            let Some(place) = source.next_row(&mut record)? else {
                return Err(DataError::input(
                    path,
                    Place::Line(1),
                    None,
                    "the file is empty: no header line",
                ));
            };
            let mut names: Vec<String> = record.iter().map(|f| f.trim().to_string()).collect();
            if let Some(first) = names.first_mut() {
                if let Some(rest) = first.strip_prefix('\u{feff}') {
                    *first = rest.to_string();
                }
            }
            if let Some(cols) = &options.columns {
                if cols.len() != names.len() {
                    return Err(DataError::input(
                        path,
                        place,
                        None,
                        format!(
                            "the header has {} columns but `columns` lists {}",
                            names.len(),
                            cols.len()
                        ),
                    ));
                }
                names = cols.clone();
            }
            source.columns = names;
            source.header_place = place;
        } else {
            source.columns = options.columns.clone().ok_or_else(|| {
                DataError::schema("`header = false` needs `columns`, the names of the file's columns in order")
            })?;
        }
        Ok(source)
    }
}

impl RowSource for CsvSource {
    fn file(&self) -> &Path {
        &self.file
    }

    fn columns(&self) -> &[String] {
        &self.columns
    }

    fn header_place(&self) -> Place {
        self.header_place
    }

    fn next_row(&mut self, record: &mut StringRecord) -> Result<Option<Place>> {
        match &mut self.inner {
            Inner::Csv(reader) => match reader.read_record(record) {
                Ok(true) => {
                    // The csv crate dates a record from where it started
                    // looking (before skipped blank lines); the reader's
                    // position after it is exact. A record spans its embedded
                    // newlines plus its terminator. (Only a last record with
                    // no final newline after blank lines is dated a line early.)
                    let from = record.position().map_or(self.line + 1, |p| p.line());
                    let to = reader.position().line();
                    let span = to.saturating_sub(from);
                    let start = if span <= 1 {
                        from
                    } else {
                        let bytes = record.as_byte_record().as_slice();
                        let inner = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                        if span == inner {
                            from
                        } else {
                            to.saturating_sub(inner + 1).max(from)
                        }
                    };
                    self.line = start.max(to.saturating_sub(1));
                    Ok(Some(Place::Line(start)))
                }
                Ok(false) => Ok(None),
                Err(e) => {
                    let line = e.position().map_or(self.line + 1, |p| p.line());
                    let message = e.to_string();
                    match e.into_kind() {
                        csv::ErrorKind::Io(io) => Err(DataError::io(&self.file, io)),
                        _ => Err(DataError::input(&self.file, Place::Line(line), None, message)),
                    }
                }
            },
            Inner::Lines { reader, separator, buf } => loop {
                buf.clear();
                let n = reader.read_line(buf).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        DataError::input(&self.file, Place::Line(self.line + 1), None, "invalid UTF-8")
                    } else {
                        DataError::io(&self.file, e)
                    }
                })?;
                if n == 0 {
                    return Ok(None);
                }
                self.line += 1;
                strip_line_end(buf);
                if buf.is_empty() {
                    continue;
                }
                record.clear();
                for field in buf.split(*separator) {
                    record.push_field(field);
                }
                return Ok(Some(Place::Line(self.line)));
            },
        }
    }

    fn trims(&self) -> bool {
        self.trim
    }

    fn end_place(&self) -> Place {
        Place::Line(self.line + 1)
    }
}
