//! Training rows divided into parts (`[data] shards`): the order of a run
//! whose ranks each read only their own part of the training rows.
//!
//! Each part is shuffled on its own every epoch, and global batch b is the
//! b-th local batch of every part, in part order (a part that has run out
//! adds no rows). A run on N ranks, rank r holding part r, and one process
//! holding all N parts therefore train on the same global batches; with
//! one part the order is the one of [`crate::InMemory`] and
//! [`crate::Streamed`] without parts.

use candle_core::Device;
use mtrec_data::{shuffled, Dataset, Part, StreamedData, Stripe};

use crate::error::{Result, TrainError};
use crate::trainer::{epoch_seed, Shard, TrainConfig};

/// The training rows of each part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainParts {
    /// Per part, the rows of it held here (dataset row indices) in a fixed
    /// order; empty for a part held elsewhere (another rank's).
    pub rows: Vec<Vec<usize>>,
    /// Per part, its number of training rows, held here or not.
    pub sizes: Vec<usize>,
}

impl TrainParts {
    /// `train` dealt into `count` parts by row index (row i to part
    /// i mod count), each in `train`'s order; every part held here.
    pub fn striped(train: &[usize], count: usize) -> Self {
        let count = count.max(1);
        let mut rows = vec![Vec::new(); count];
        for &i in train {
            rows[i % count].push(i);
        }
        let sizes = rows.iter().map(Vec::len).collect();
        Self { rows, sizes }
    }

    /// Part `part` of `sizes.len()` held here (its rows `train`), the
    /// others elsewhere.
    pub fn own(part: usize, train: &[usize], sizes: Vec<usize>) -> Self {
        let mut rows = vec![Vec::new(); sizes.len()];
        if let Some(r) = rows.get_mut(part) {
            *r = train.to_vec();
        }
        Self { rows, sizes }
    }

    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Errors unless this process holds what a run on `ranks` ranks needs
    /// of it as rank `rank`: one part per rank and its own part whole, or
    /// with one rank every part whole.
    fn check(&self, rank: usize, ranks: usize) -> Result<()> {
        let held = |p: usize| self.rows.get(p).map(Vec::len) == self.sizes.get(p).copied();
        if ranks > 1 && self.count() != ranks {
            return Err(TrainError::Invalid(format!(
                "the training rows are in {} parts but the run has {ranks} ranks: with several ranks, \
                 shards must be 1 or the number of ranks",
                self.count()
            )));
        }
        let needed: Vec<usize> = if ranks > 1 {
            vec![rank]
        } else {
            (0..self.count()).collect()
        };
        if let Some(p) = needed.into_iter().find(|&p| !held(p)) {
            return Err(TrainError::Invalid(format!(
                "training part {p} is not held here ({} of its {} rows)",
                self.rows.get(p).map_or(0, Vec::len),
                self.sizes.get(p).copied().unwrap_or(0)
            )));
        }
        Ok(())
    }
}

/// The seed of part `part`'s order in `epoch`: part 0's is the epoch's
/// seed, so that one part replays the order without parts.
pub fn part_seed(seed: u64, epoch: usize, part: usize) -> u64 {
    epoch_seed(seed, epoch) ^ (part as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Rows per part in a global batch: the per-rank batch size with several
/// ranks, the batch size divided among the parts in one process.
pub fn local_batch(cfg: &TrainConfig, parts: usize, ranks: usize) -> Result<usize> {
    let b = cfg.batch_size.max(1);
    if ranks > 1 {
        return Ok(b);
    }
    if b % parts.max(1) != 0 {
        return Err(TrainError::Invalid(format!(
            "batch_size {b} cannot be divided among {parts} shards: give a multiple of {parts} (each shard's batch is \
             batch_size / shards rows in one process)"
        )));
    }
    Ok(b / parts.max(1))
}

/// Rank `rank`'s shards of `epoch` from rows in memory.
pub(crate) fn memory_shards<'s>(
    data: &'s Dataset,
    parts: &'s TrainParts,
    epoch: usize,
    cfg: &TrainConfig,
    device: &Device,
    rank: usize,
    ranks: usize,
) -> Result<Box<dyn Iterator<Item = Result<Shard>> + 's>> {
    parts.check(rank, ranks)?;
    let local = local_batch(cfg, parts.count(), ranks)?;
    let orders: Vec<Vec<usize>> = parts
        .rows
        .iter()
        .enumerate()
        .map(|(p, rows)| {
            shuffled(rows.len(), part_seed(cfg.seed, epoch, p))
                .into_iter()
                .map(|i| rows[i])
                .collect()
        })
        .collect();
    let steps = parts.sizes.iter().map(|n| n.div_ceil(local)).max().unwrap_or(0);
    let sizes = parts.sizes.clone();
    let device = device.clone();
    Ok(Box::new((0..steps).map(move |b| {
        let span = |p: usize| (b * local).min(sizes[p])..((b + 1) * local).min(sizes[p]);
        let global_rows = (0..sizes.len()).map(|p| span(p).len()).sum();
        let rows: Vec<usize> = if ranks > 1 {
            orders[rank][span(rank)].to_vec()
        } else {
            (0..sizes.len())
                .flat_map(|p| orders[p][span(p)].iter().copied())
                .collect()
        };
        Ok(Shard {
            batch: if rows.is_empty() {
                None
            } else {
                Some(data.batch(&rows, &device)?)
            },
            global_rows,
        })
    })))
}

/// Rank `rank`'s shards of `epoch` from a streamed file: with several
/// ranks, this rank's own stripe ([`StreamedData::train_stripe`]) in
/// batches of `batch_size` (the global row count is summed over the ranks
/// by the step loop); in one process, `parts` streams read side by side.
pub(crate) fn streamed_shards<'s>(
    data: &'s StreamedData,
    parts: usize,
    epoch: usize,
    cfg: &TrainConfig,
    device: &Device,
    rank: usize,
    ranks: usize,
) -> Result<Box<dyn Iterator<Item = Result<Shard>> + 's>> {
    let device = device.clone();
    let local = local_batch(cfg, parts, ranks)?;
    if ranks > 1 {
        let stripe = data.train_stripe;
        if stripe.count() != ranks || stripe.part() != rank {
            return Err(TrainError::Invalid(format!(
                "rank {rank} of {ranks} reads training part {} of {}: with several ranks, shards must be 1 or the \
                 number of ranks",
                stripe.part(),
                stripe.count()
            )));
        }
        let batches = data.prefetched_batches(Part::Train, local, Some(part_seed(cfg.seed, epoch, rank)))?;
        return Ok(Box::new(batches.map(move |b| {
            let b = b?;
            Ok(Shard {
                global_rows: b.rows(),
                batch: Some(b.to_batch(&device)?),
            })
        })));
    }
    let mut streams = (0..parts)
        .map(|p| {
            let stripe = Stripe::new(p, parts)?;
            data.prefetched_batches_in(Part::Train, stripe, local, Some(part_seed(cfg.seed, epoch, p)))
        })
        .collect::<mtrec_data::Result<Vec<_>>>()?;
    Ok(Box::new(std::iter::from_fn(move || {
        let mut pieces = Vec::new();
        for s in &mut streams {
            match s.next() {
                Some(Ok(d)) => pieces.push(d),
                Some(Err(e)) => return Some(Err(e.into())),
                None => {}
            }
        }
        if pieces.is_empty() {
            return None;
        }
        let step = || -> Result<Shard> {
            let all = Dataset::concat(&pieces)?;
            Ok(Shard {
                global_rows: all.rows(),
                batch: Some(all.to_batch(&device)?),
            })
        };
        Some(step())
    })))
}
