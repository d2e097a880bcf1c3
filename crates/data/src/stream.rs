//! Out-of-core reading: a data set too large for memory is read again on
//! every pass, chunk by chunk, and never held whole.
//!
//! - [`Batches`] turns encoded chunks ([`Preprocessor::encode_chunks`]) into
//!   batches of a fixed number of rows, optionally through a seeded
//!   **shuffle buffer**: the first `capacity` rows fill the buffer, then each
//!   new row replaces a uniformly drawn buffered row, which is emitted; at
//!   the end of the file the buffer is emptied in random order. Every row is
//!   emitted exactly once per pass, in an order fixed by the seed. It is an
//!   *approximate* shuffle: a row can only move up to about `capacity` rows
//!   earlier than its file position (rows stay near their place in the file,
//!   so a file sorted by label or time needs a buffer large relative to such
//!   runs), but memory is bounded by the buffer, not the file. Without a
//!   buffer the batches are the file's rows in order.
//! - [`HashSplit`]: a train/valid/test split of one file by a hash of each
//!   row's index and a seed: no counting pass, no per-row memory; each part
//!   gets its fraction of the rows up to sampling noise (not exactly, unlike
//!   [`split`](crate::split())).
//! - [`StreamedData`]: a tabular data set to stream: the fitted
//!   preprocessor, the files of each part, the chunk and buffer sizes.
//!
//! - [`Prefetch`]: batches formed on a reading thread, [`PREFETCH_BATCHES`]
//!   ahead of the training loop, so that reading and encoding the file
//!   overlaps with training instead of stalling it.
//!
//! Rows held in memory at any time: at most one chunk (`chunk_rows`), the
//! shuffle buffer (`shuffle_buffer`, training only) and the batch being
//! formed (`batch_size`); [`Batches::peak_rows`] measures it. Prefetched
//! training adds the batches waiting for the loop (at most
//! `PREFETCH_BATCHES + 1`). The readers add a fixed buffer (CSV: 64 KiB;
//! Parquet: one row group's pages).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::preprocess::{Fitting, Labels, Preprocessor, ProgressFn, Reporter};
use crate::schema::{DataFiles, TabularSchema, TaskSpec};
use crate::shard::Stripe;
use crate::tabular::ShardRead;

/// Default rows per chunk read from a file.
pub const DEFAULT_CHUNK_ROWS: usize = 65_536;
/// Default rows of the shuffle buffer.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 262_144;

/// Sizes of a streamed read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Rows encoded at a time from a file.
    pub chunk_rows: usize,
    /// Rows of the training shuffle buffer; 1 keeps the file order.
    pub shuffle_buffer: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            shuffle_buffer: DEFAULT_SHUFFLE_BUFFER,
        }
    }
}

impl StreamOptions {
    /// Both sizes must be at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_rows == 0 {
            return Err(DataError::setting(
                "chunk_rows",
                0,
                "at least 1 (rows read from a file at a time, e.g. 65536)",
            ));
        }
        if self.shuffle_buffer == 0 {
            return Err(DataError::setting(
                "shuffle_buffer",
                0,
                "at least 1 (rows shuffled together, e.g. 262144; 1 keeps the file order)",
            ));
        }
        Ok(())
    }
}

/// A part of a train/valid/test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Train,
    Valid,
    Test,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Train => "train",
            Part::Valid => "valid",
            Part::Test => "test",
        })
    }
}

/// SplitMix64's finaliser: a fixed, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A split of one file's rows by a hash of (seed, row index): row `i` is in
/// the part whose cumulative fraction first exceeds `u(seed, i)`, a uniform
/// number in `[0, 1)`. Deterministic, needs no row count and no memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HashSplit {
    pub fractions: [f64; 3],
    pub seed: u64,
}

impl HashSplit {
    /// Errors as [`split`](crate::split()): a fraction not finite or not > 0,
    /// fractions not summing to 1.
    pub fn new(fractions: [f64; 3], seed: u64) -> Result<Self> {
        crate::split::check_fractions(fractions)?;
        Ok(Self { fractions, seed })
    }

    /// The part of row `row` (0-based, in file order).
    pub fn part(&self, row: u64) -> Part {
        let h = mix(self.seed ^ mix(row));
        // The top 53 bits as a uniform f64 in [0, 1).
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.fractions[0] {
            Part::Train
        } else if u < self.fractions[0] + self.fractions[1] {
            Part::Valid
        } else {
            Part::Test
        }
    }
}

/// The largest number of rows a [`Batches`] held at once, shared by the
/// clones of the handle (so it can be read after the batches are consumed).
#[derive(Clone, Debug, Default)]
pub struct PeakRows(Arc<AtomicUsize>);

impl PeakRows {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn see(&self, rows: usize) {
        self.0.fetch_max(rows, Ordering::Relaxed);
    }
}

/// A seeded shuffle buffer of `capacity` rows (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shuffle {
    pub capacity: usize,
    pub seed: u64,
}

/// Batches of `batch_size` rows (the last may be shorter) formed from
/// encoded chunks, shuffled through a buffer or in file order. An error from
/// the chunks is passed on and ends the batches.
pub struct Batches<I> {
    chunks: I,
    batch_size: usize,
    shuffle: Option<(usize, StdRng)>,
    /// The chunk being consumed and the next row to take from it.
    chunk: Option<(Dataset, usize)>,
    buffer: Option<Dataset>,
    out: Option<Dataset>,
    exhausted: bool,
    failed: Option<DataError>,
    peak: PeakRows,
}

impl<I> std::fmt::Debug for Batches<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("batch_size", &self.batch_size)
            .field("peak_rows", &self.peak.get())
            .finish()
    }
}

impl<I: Iterator<Item = Result<Dataset>>> Batches<I> {
    /// Batches of `chunks`. A `batch_size` or shuffle `capacity` of 0 yields
    /// one error.
    pub fn new(chunks: I, batch_size: usize, shuffle: Option<Shuffle>) -> Self {
        let failed = if batch_size == 0 {
            Some(DataError::setting("batch_size", 0, "at least 1"))
        } else if shuffle.is_some_and(|s| s.capacity == 0) {
            Some(DataError::setting("shuffle_buffer", 0, "at least 1"))
        } else {
            None
        };
        Self {
            chunks,
            batch_size,
            shuffle: shuffle.map(|s| (s.capacity, StdRng::seed_from_u64(s.seed))),
            chunk: None,
            buffer: None,
            out: None,
            exhausted: false,
            failed,
            peak: PeakRows::default(),
        }
    }

    /// Reports the peak into `peak` (shared with the caller) instead of a
    /// handle of its own.
    pub fn with_peak(mut self, peak: PeakRows) -> Self {
        self.peak = peak;
        self
    }

    /// The largest number of rows held at once so far: the current chunk
    /// (all its rows, until it is used up), the shuffle buffer and the batch
    /// being formed; at most `chunk_rows + capacity + batch_size`.
    pub fn peak_rows(&self) -> usize {
        self.peak.get()
    }

    fn held(&self) -> usize {
        self.chunk.as_ref().map_or(0, |(c, _)| c.rows())
            + self.buffer.as_ref().map_or(0, Dataset::rows)
            + self.out.as_ref().map_or(0, Dataset::rows)
    }

    /// Moves one row on (into the buffer or the batch); `false` when no row
    /// is left.
    fn advance(&mut self) -> Result<bool> {
        loop {
            if let Some((chunk, pos)) = &mut self.chunk {
                if *pos < chunk.rows() {
                    let r = *pos;
                    *pos += 1;
                    let out = self.out.get_or_insert_with(|| chunk.empty_like());
                    match &mut self.shuffle {
                        None => out.push_row(chunk, r),
                        Some((capacity, rng)) => {
                            let buffer = self.buffer.get_or_insert_with(|| chunk.empty_like());
                            if buffer.rows() < *capacity {
                                buffer.push_row(chunk, r);
                            } else {
                                let j = rng.random_range(0..buffer.rows());
                                out.push_row(buffer, j);
                                buffer.replace_row(j, chunk, r);
                            }
                        }
                    }
                    let held = self.held();
                    self.peak.see(held);
                    return Ok(true);
                }
                // Used up: free it before the next one is read.
                self.chunk = None;
            }
            if !self.exhausted {
                match self.chunks.next() {
                    Some(Ok(next)) => {
                        let template = self.out.as_ref().or(self.buffer.as_ref());
                        if template.is_some_and(|t| !t.same_columns(&next)) {
                            return Err(DataError::InvalidDataset(
                                "a chunk's columns differ from the earlier chunks'".into(),
                            ));
                        }
                        self.chunk = Some((next, 0));
                        let held = self.held();
                        self.peak.see(held);
                        continue;
                    }
                    Some(Err(e)) => return Err(e),
                    None => self.exhausted = true,
                }
            }
            // The file is read: empty the buffer in random order.
            if let (Some((_, rng)), Some(buffer)) = (&mut self.shuffle, &mut self.buffer) {
                if buffer.rows() > 0 {
                    let j = rng.random_range(0..buffer.rows());
                    let out = self.out.get_or_insert_with(|| buffer.empty_like());
                    out.push_row(buffer, j);
                    buffer.swap_remove_row(j);
                    return Ok(true);
                }
            }
            return Ok(false);
        }
    }
}

impl<I: Iterator<Item = Result<Dataset>>> Iterator for Batches<I> {
    type Item = Result<Dataset>;

    fn next(&mut self) -> Option<Result<Dataset>> {
        if let Some(e) = self.failed.take() {
            self.exhausted = true;
            self.chunk = None;
            self.buffer = None;
            self.out = None;
            self.shuffle = None;
            return Some(Err(e));
        }
        loop {
            if self.out.as_ref().is_some_and(|o| o.rows() >= self.batch_size) {
                let out = self.out.as_mut()?;
                let next = out.empty_like();
                return Some(Ok(std::mem::replace(out, next)));
            }
            match self.advance() {
                Ok(true) => {}
                Ok(false) => {
                    return self.out.take().filter(|o| o.rows() > 0).map(Ok);
                }
                Err(e) => {
                    self.failed = Some(e);
                    return self.next();
                }
            }
        }
    }
}

/// The files of a streamed data set.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamFiles {
    /// One file per part.
    Separate {
        train: PathBuf,
        valid: PathBuf,
        test: PathBuf,
    },
    /// One file, split by [`HashSplit`].
    Single { path: PathBuf, split: HashSplit },
}

/// Batches a [`Prefetch`] forms ahead of the loop that takes them.
pub const PREFETCH_BATCHES: usize = 2;

/// The items of an iterator produced on a thread of their own, up to
/// `depth` items ahead of the consumer, in the iterator's order. Dropping it
/// stops the thread after the item it is producing.
pub struct Prefetch {
    rx: Receiver<Result<Dataset>>,
    handle: Option<JoinHandle<()>>,
    file: PathBuf,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").field("file", &self.file).finish()
    }
}

impl Prefetch {
    /// Runs `items` (batches read from `file`, named in errors) on a new
    /// thread.
    pub fn spawn<I>(items: I, depth: usize, file: &Path) -> Result<Self>
    where
        I: Iterator<Item = Result<Dataset>> + Send + 'static,
    {
        let (tx, rx) = sync_channel(depth);
        let handle = std::thread::Builder::new()
            .name("mtrec-read".into())
            .spawn(move || {
                for item in items {
                    // The consumer is gone (done or failed): stop reading.
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| DataError::io(file, e))?;
        Ok(Self {
            rx,
            handle: Some(handle),
            file: file.to_path_buf(),
        })
    }
}

impl Iterator for Prefetch {
    type Item = Result<Dataset>;

    fn next(&mut self) -> Option<Result<Dataset>> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            // The thread is done; a panic there is an error, not an early end.
            Err(_) => match self.handle.take().map(JoinHandle::join) {
                Some(Err(_)) => Some(Err(DataError::io(
                    &self.file,
                    std::io::Error::other("the thread reading this file panicked"),
                ))),
                _ => None,
            },
        }
    }
}

/// A tabular data set to stream: each pass re-reads its files.
#[derive(Clone, Debug)]
pub struct StreamedData {
    /// Shared with the reading threads of prefetched passes.
    pub preprocessor: Arc<Preprocessor>,
    pub files: StreamFiles,
    pub options: StreamOptions,
    /// The training rows this reader reads ([`Stripe::WHOLE`] but for a
    /// rank of a data-parallel run reading its own part,
    /// [`StreamedData::open_sharded`]); validation and test rows are read
    /// whole.
    pub train_stripe: Stripe,
    peak: PeakRows,
}

impl StreamedData {
    pub fn new(preprocessor: Preprocessor, files: StreamFiles, options: StreamOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            preprocessor: Arc::new(preprocessor),
            files,
            options,
            train_stripe: Stripe::WHOLE,
            peak: PeakRows::default(),
        })
    }

    /// Fits the preprocessor on the training rows (one pass over the train
    /// file, or over the one file keeping the hash split's train rows) and
    /// describes the streamed parts. `fractions` and `seed` split a single
    /// `path` (see [`HashSplit`]); they are unused for three files.
    pub fn open(
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        base: Option<&Path>,
        fractions: [f64; 3],
        seed: u64,
        options: StreamOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Self> {
        Self::open_sharded(
            schema,
            tasks,
            base,
            fractions,
            seed,
            options,
            Fitting::Fresh,
            None,
            progress,
        )
    }

    /// [`StreamedData::open`] with the preprocessing obtained as `fitting`
    /// says (a trained run's, kept or grown: warm start), and read by one
    /// reader of several ([`ShardRead`]: a rank of a data-parallel run)
    /// when `shard` is given: the preprocessing is fitted on every reader's training rows
    /// (this reader counts its stripe, `merge` adds the others'), and the
    /// training passes read only this reader's stripe of the training rows
    /// (file row i, counted in the train file or in the one `path`, is in
    /// part i mod parts).
    #[allow(clippy::too_many_arguments)]
    pub fn open_sharded(
        schema: &TabularSchema,
        tasks: &[TaskSpec],
        base: Option<&Path>,
        fractions: [f64; 3],
        seed: u64,
        options: StreamOptions,
        fitting: Fitting<'_>,
        shard: Option<ShardRead<'_>>,
        progress: ProgressFn<'_>,
    ) -> Result<Self> {
        options.validate()?;
        let mut reporter = Reporter::new(progress);
        let stripe = shard.map_or(Stripe::WHOLE, |s| s.stripe);
        let merge = shard.map(|s| s.merge);
        let (preprocessor, files) = match schema.resolve(base)? {
            DataFiles::Separate { train, valid, test } => {
                let select = |i: u64| stripe.holds(i);
                let pre = fitting.fit_merged(schema, tasks, &train, Some(&select), merge, &mut reporter)?;
                (pre, StreamFiles::Separate { train, valid, test })
            }
            DataFiles::Single { path } => {
                let split = HashSplit::new(fractions, seed)?;
                let select = |i: u64| split.part(i) == Part::Train && stripe.holds(i);
                let pre = fitting.fit_merged(schema, tasks, &path, Some(&select), merge, &mut reporter)?;
                (pre, StreamFiles::Single { path, split })
            }
        };
        let mut data = Self::new(preprocessor, files, options)?;
        data.train_stripe = stripe;
        Ok(data)
    }

    /// The file `part` is read from.
    pub fn file_of(&self, part: Part) -> &Path {
        match &self.files {
            StreamFiles::Separate { train, valid, test } => match part {
                Part::Train => train,
                Part::Valid => valid,
                Part::Test => test,
            },
            StreamFiles::Single { path, .. } => path,
        }
    }

    /// The encoded chunks of `part` this reader reads (its
    /// [`StreamedData::train_stripe`] of the training rows), in file order
    /// (labels required).
    pub fn chunks(&self, part: Part) -> crate::preprocess::EncodeChunks<'static> {
        self.chunks_in(part, self.stripe_of(part))
    }

    fn stripe_of(&self, part: Part) -> Stripe {
        match part {
            Part::Train => self.train_stripe,
            Part::Valid | Part::Test => Stripe::WHOLE,
        }
    }

    /// The encoded chunks of the rows of `part` in `stripe`, in file order.
    pub fn chunks_in(&self, part: Part, stripe: Stripe) -> crate::preprocess::EncodeChunks<'static> {
        let rows = self.options.chunk_rows;
        let chunks = match &self.files {
            StreamFiles::Separate { .. } => {
                self.preprocessor
                    .encode_chunks_shared(self.file_of(part), rows, Labels::Required)
            }
            StreamFiles::Single { path, split } => self
                .preprocessor
                .encode_chunks_shared(path, rows, Labels::Required)
                .only(*split, part),
        };
        if stripe == Stripe::WHOLE {
            chunks
        } else {
            chunks.filter(Arc::new(move |i| stripe.holds(i)))
        }
    }

    /// Batches of `part`: shuffled through the buffer with `shuffle_seed`,
    /// or in file order without it.
    pub fn batches(
        &self,
        part: Part,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Batches<crate::preprocess::EncodeChunks<'static>> {
        self.batches_in(part, self.stripe_of(part), batch_size, shuffle_seed)
    }

    /// [`StreamedData::batches`] of the rows of `part` in `stripe`.
    pub fn batches_in(
        &self,
        part: Part,
        stripe: Stripe,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Batches<crate::preprocess::EncodeChunks<'static>> {
        let shuffle = shuffle_seed.map(|seed| Shuffle {
            capacity: self.options.shuffle_buffer,
            seed,
        });
        Batches::new(self.chunks_in(part, stripe), batch_size, shuffle).with_peak(self.peak.clone())
    }

    /// [`StreamedData::batches`] formed on a reading thread,
    /// [`PREFETCH_BATCHES`] ahead of the caller; the same batches in the
    /// same order.
    pub fn prefetched_batches(&self, part: Part, batch_size: usize, shuffle_seed: Option<u64>) -> Result<Prefetch> {
        self.prefetched_batches_in(part, self.stripe_of(part), batch_size, shuffle_seed)
    }

    /// [`StreamedData::prefetched_batches`] of the rows of `part` in `stripe`.
    pub fn prefetched_batches_in(
        &self,
        part: Part,
        stripe: Stripe,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<Prefetch> {
        Prefetch::spawn(
            self.batches_in(part, stripe, batch_size, shuffle_seed),
            PREFETCH_BATCHES,
            self.file_of(part),
        )
    }

    /// The most rows held at once by any of this data set's batches so far.
    pub fn peak_rows(&self) -> usize {
        self.peak.get()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use mtrec_core::{TaskInfo, TaskKind};

    use super::*;
    use crate::dataset::DenseColumns;

    /// `n` rows whose dense value is the row index.
    fn numbered(from: usize, n: usize) -> Dataset {
        Dataset::new(
            vec![TaskInfo {
                name: "t".into(),
                kind: TaskKind::Regression,
            }],
            None,
            Some(DenseColumns {
                names: vec!["x".into()],
                values: (from..from + n).map(|i| i as f32).collect(),
            }),
            vec![0.0; n],
            vec![1.0; n],
            None,
        )
        .unwrap()
    }

    fn chunks(total: usize, chunk: usize) -> impl Iterator<Item = Result<Dataset>> {
        (0..total)
            .step_by(chunk)
            .map(move |s| Ok(numbered(s, chunk.min(total - s))))
    }

    #[test]
    fn prefetch_yields_the_same_batches_in_order_and_passes_errors_on() {
        let direct = rows_of(Batches::new(
            chunks(1000, 64),
            50,
            Some(Shuffle { capacity: 200, seed: 3 }),
        ));
        let ahead = Prefetch::spawn(
            Batches::new(chunks(1000, 64), 50, Some(Shuffle { capacity: 200, seed: 3 })),
            PREFETCH_BATCHES,
            Path::new("numbers.csv"),
        )
        .unwrap();
        assert_eq!(rows_of(ahead), direct);

        // An error item arrives in its place; the items before it too.
        let failing = chunks(100, 10)
            .take(3)
            .chain(std::iter::once(Err(DataError::InvalidDataset("bad row".into()))));
        let items: Vec<_> = Prefetch::spawn(failing, 1, Path::new("f.csv")).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert!(items[..3].iter().all(Result::is_ok));
        assert!(items[3].as_ref().unwrap_err().to_string().contains("bad row"));
    }

    #[test]
    fn a_panicking_reader_is_an_error_naming_the_file_and_an_early_drop_stops_it() {
        let panics = chunks(30, 10).map(|c| {
            let c = c?;
            if c.dense.as_ref().unwrap().values[0] >= 20.0 {
                panic!("reader bug");
            }
            Ok(c)
        });
        let items: Vec<_> = Prefetch::spawn(panics, 1, Path::new("data/train.csv"))
            .unwrap()
            .collect();
        assert_eq!(items.len(), 3);
        let err = items[2].as_ref().unwrap_err().to_string();
        assert!(err.contains("data/train.csv") && err.contains("panicked"), "{err}");

        // Taking one item of an endless source and dropping the rest ends.
        let mut endless = Prefetch::spawn((0..).map(|i| Ok(numbered(i, 1))), PREFETCH_BATCHES, Path::new("x")).unwrap();
        assert!(endless.next().unwrap().is_ok());
        drop(endless);
    }

    fn rows_of(batches: impl Iterator<Item = Result<Dataset>>) -> (Vec<usize>, Vec<usize>) {
        let mut rows = Vec::new();
        let mut sizes = Vec::new();
        for b in batches {
            let b = b.unwrap();
            sizes.push(b.rows());
            rows.extend(b.dense.as_ref().unwrap().values.iter().map(|&v| v as usize));
        }
        (rows, sizes)
    }

    #[test]
    fn unshuffled_batches_are_the_file_order() {
        let (rows, sizes) = rows_of(Batches::new(chunks(23, 5), 4, None));
        assert_eq!(rows, (0..23).collect::<Vec<_>>());
        assert_eq!(sizes, [4, 4, 4, 4, 4, 3]);
    }

    #[test]
    fn shuffle_emits_every_row_once_seeded_with_bounded_memory() {
        let total = 5_000;
        let shuffle = |seed| Some(Shuffle { capacity: 300, seed });
        let a = Batches::new(chunks(total, 128), 64, shuffle(7));
        let peak = a.peak.clone();
        let (rows, sizes) = rows_of(a);
        assert!(sizes.iter().all(|&s| s == 64) || sizes.last() < Some(&64));
        assert_eq!(sizes.iter().sum::<usize>(), total);
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "every row exactly once");
        assert_ne!(rows, (0..total).collect::<Vec<_>>(), "shuffled");
        assert!(peak.get() <= 128 + 300 + 64, "peak {}", peak.get());
        assert!(peak.get() >= 300, "the buffer filled: {}", peak.get());
        // Seeded: the same order again; another seed, another order.
        assert_eq!(rows_of(Batches::new(chunks(total, 128), 64, shuffle(7))).0, rows);
        assert_ne!(rows_of(Batches::new(chunks(total, 128), 64, shuffle(8))).0, rows);
        // A buffer of one row keeps the file order.
        let one = Some(Shuffle { capacity: 1, seed: 3 });
        assert_eq!(
            rows_of(Batches::new(chunks(50, 7), 8, one)).0,
            (0..50).collect::<Vec<_>>()
        );
        // A buffer larger than the data is a full shuffle of it.
        let big = Some(Shuffle {
            capacity: 10_000,
            seed: 3,
        });
        let (rows, _) = rows_of(Batches::new(chunks(100, 7), 8, big));
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn errors_end_the_batches() {
        let items: Vec<_> = Batches::new(chunks(10, 5), 0, None).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].as_ref().unwrap_err().to_string().contains("`batch_size` = 0"));
        let bad = chunks(10, 5).chain(std::iter::once(Err(DataError::InvalidDataset("boom".into()))));
        let items: Vec<_> = Batches::new(bad, 4, Some(Shuffle { capacity: 3, seed: 1 })).collect();
        assert!(items.last().unwrap().as_ref().unwrap_err().to_string().contains("boom"));
        assert!(items.iter().filter(|i| i.is_err()).count() == 1);
        let msg = StreamOptions {
            chunk_rows: 0,
            shuffle_buffer: 1,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(msg.contains("`chunk_rows` = 0"), "{msg}");
    }

    #[test]
    fn hash_split_is_seeded_and_near_its_fractions() {
        let s = HashSplit::new([0.6, 0.2, 0.2], 5).unwrap();
        let parts: Vec<Part> = (0..20_000).map(|i| s.part(i)).collect();
        let share = |p| parts.iter().filter(|&&q| q == p).count() as f64 / 20_000.0;
        assert!((share(Part::Train) - 0.6).abs() < 0.02);
        assert!((share(Part::Valid) - 0.2).abs() < 0.02);
        assert_eq!(parts, (0..20_000).map(|i| s.part(i)).collect::<Vec<_>>());
        let other = HashSplit::new([0.6, 0.2, 0.2], 6).unwrap();
        assert_ne!(parts, (0..20_000).map(|i| other.part(i)).collect::<Vec<_>>());
        assert!(HashSplit::new([0.5, 0.5, 0.5], 1).is_err());
    }
}
