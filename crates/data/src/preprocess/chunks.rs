//! Files read in chunks of rows (out-of-core passes): `EncodeChunks`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use csv::StringRecord;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::read::{self, RowSource};
use crate::stream::{HashSplit, Part};

use super::{Binding, Builder, Cond, Labels, Pass, Preprocessor, Reporter, PROGRESS_EVERY};

impl Preprocessor {
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
}

pub(super) enum ChunkState {
    Failed(DataError),
    Reading { src: Box<dyn RowSource>, bind: Binding },
    Done,
}

/// The preprocessor of an [`EncodeChunks`]: borrowed, or shared so that the
/// chunks can move to a reading thread.
pub(super) enum PreRef<'p> {
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

/// Which rows of a file (0-based index in file order) to encode; the others
/// are read and skipped. Shared with reading threads.
pub type RowFilter = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// The datasets of [`Preprocessor::encode_chunks`].
pub struct EncodeChunks<'p> {
    pub(super) pre: PreRef<'p>,
    pub(super) file: PathBuf,
    pub(super) chunk_rows: usize,
    pub(super) conds: Vec<(Cond, Option<Cond>)>,
    pub(super) state: ChunkState,
    pub(super) record: StringRecord,
    /// Rows encoded so far.
    pub(super) rows: u64,
    /// Rows read so far (encoded or skipped by `keep`).
    pub(super) read: u64,
    /// Only the rows of this part of this split are encoded.
    pub(super) keep: Option<(HashSplit, Part)>,
    /// And of those, only the rows this filter holds (a rank's stripe).
    pub(super) filter: Option<RowFilter>,
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
    /// Only the rows of the file that the hash split puts in `part` (rows
    /// of other parts are read, not encoded; labels required).
    pub fn only(mut self, split: HashSplit, part: Part) -> Self {
        self.keep = Some((split, part));
        self
    }

    /// Only the rows `filter` holds (besides [`EncodeChunks::only`]'s
    /// part), e.g. one rank's [`Stripe`](crate::shard::Stripe).
    pub fn filter(mut self, filter: RowFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    pub(super) fn new(pre: PreRef<'p>, path: &Path, chunk_rows: usize, labels: Labels) -> Self {
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
            filter: None,
        }
    }

    /// The error met on opening, if any (the iterator is then done).
    pub(super) fn take_error(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, ChunkState::Done) {
            ChunkState::Failed(e) => Err(e),
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    pub(super) fn read_chunk(&mut self, reporter: &mut Reporter<'_>) -> Result<Option<Dataset>> {
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
                || self.filter.as_ref().is_some_and(|f| !f(index))
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
                    _ if self.read > 0 && self.filter.is_some() => format!(
                        "none of the file's {} rows falls in this rank's part: \
                         give at least as many rows as ranks (row i goes to rank i mod ranks)",
                        self.read
                    ),
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
