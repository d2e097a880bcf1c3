//! Gradient synchronisation for data-parallel training: what turns the
//! gradients of one rank's part of a global batch into those of the whole
//! global batch, identically on every rank.
//!
//! Per step, before anything else, [`GradSync::next_step`]: the ranks vote
//! (one byte each) that they all have another global batch. Then, after
//! the forward pass:
//! 1. [`GradSync::global_losses`]: one all-reduce of `2K` numbers (each
//!    task's labelled-row count and loss sum). A task's loss over the
//!    global batch is the mean over the global batch's labelled rows, so
//!    each rank scales its local masked mean by `local rows / global rows`:
//!    the sum of the ranks' scaled gradients is then the gradient of the
//!    global mean (a plain average of the ranks' means would weigh a row of
//!    a rank with few labelled rows more). With sample weights the counts
//!    are the labelled rows' weight sums (the weighted mean's denominator,
//!    `mtrec_core::loss::weighted_task_loss`).
//! 2. [`GradSync::merge_rows`]: one all-gather of the embedding-table row
//!    ids each rank touched; every rank forms, per table, the sorted union
//!    and a fresh copy of those rows ([`TouchedRows`]), so that every rank's
//!    optimizer updates the same rows.
//! 3. [`GradSync::reduce`] (per gradient store: one, or one per task for
//!    the balancers that need per-task gradients): one all-reduce of a
//!    buffer holding every dense variable's gradient and, per table, the
//!    rows of the union (each rank's rows placed at their union position,
//!    zeros elsewhere), with a presence flag per variable and table so that
//!    a variable no rank reached stays without gradient (as in one process:
//!    Adam skips it, lazy Adam does not step the rows).
//!
//! With one rank every call returns at once and nothing is copied.

use std::rc::Rc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use mtrec_core::{Model, TouchedRows};
use mtrec_data::Batch;
use mtrec_distributed::{Collective, Local};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::trainer::Shard;

/// Bytes a rank sent per training step, on average over an epoch (the
/// payloads handed to the collectives; the transport's own overhead and the
/// fan-out of its algorithm not included).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Exchange {
    pub ranks: usize,
    pub steps: usize,
    /// Dense gradients (and their presence flags, and the loss sums).
    pub dense_bytes_per_step: f64,
    /// Row ids gathered plus the union rows' gradients all-reduced.
    pub sparse_bytes_per_step: f64,
    /// Rows in the union of the ranks' touched rows, all tables, per step.
    pub sparse_rows_per_step: f64,
}

/// The rows of every table touched by any rank in this step.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    /// Per table touched by some rank: the union rows and their copy.
    pub touched: Vec<TouchedRows>,
    /// Per entry of `touched`: the index in this rank's own touched list
    /// and, per local row, its position in the union.
    local: Vec<Option<(usize, Vec<usize>)>>,
}

/// The collective of a training run and its byte counters.
pub(crate) struct GradSync {
    coll: Rc<dyn Collective>,
    dense_bytes: u64,
    sparse_bytes: u64,
    sparse_rows: u64,
    steps: usize,
}

impl std::fmt::Debug for GradSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradSync").field("size", &self.coll.size()).finish()
    }
}

pub(crate) fn dist_error(e: mtrec_distributed::DistributedError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

impl GradSync {
    pub fn new(coll: Rc<dyn Collective>) -> Self {
        Self {
            coll,
            dense_bytes: 0,
            sparse_bytes: 0,
            sparse_rows: 0,
            steps: 0,
        }
    }

    /// One process: every call is the identity.
    pub fn local() -> Self {
        Self::new(Rc::new(Local))
    }

    pub fn size(&self) -> usize {
        self.coll.size()
    }

    /// The counters since the last call, reset.
    pub fn take_exchange(&mut self) -> Option<Exchange> {
        if self.size() == 1 {
            return None;
        }
        let steps = self.steps.max(1) as f64;
        let e = Exchange {
            ranks: self.size(),
            steps: self.steps,
            dense_bytes_per_step: self.dense_bytes as f64 / steps,
            sparse_bytes_per_step: self.sparse_bytes as f64 / steps,
            sparse_rows_per_step: self.sparse_rows as f64 / steps,
        };
        self.dense_bytes = 0;
        self.sparse_bytes = 0;
        self.sparse_rows = 0;
        self.steps = 0;
        Some(e)
    }

    /// Whether every rank goes on with another step of `epoch`: `next` is
    /// this rank's next global batch. With several ranks they vote (one
    /// byte each), so that a rank whose data ran out early (other files
    /// behind the same paths) is an error naming it on every rank, not a
    /// rank waiting forever in an exchange the others never join.
    pub fn next_step<T>(&mut self, next: Option<T>, epoch: usize) -> Result<Option<T>> {
        if self.size() == 1 {
            return Ok(next);
        }
        let votes = self.coll.all_gather(&[u8::from(next.is_some())]).map_err(dist_error)?;
        self.dense_bytes += 1;
        if let Some(odd) = votes.iter().position(|v| v.as_slice() != votes[0].as_slice()) {
            let (more, fewer) = if votes[0] == [1] { (0, odd) } else { (odd, 0) };
            return Err(TrainError::Distributed(format!(
                "in epoch {epoch}, rank {fewer} has no more training batches while rank {more} has: the ranks' \
                 training data differ (every rank must read the same files)"
            )));
        }
        Ok(next)
    }

    /// [`GradSync::next_step`] for ranks that each train on their own part
    /// of the rows (they may run out at different steps): the step happens
    /// while any rank has rows (a rank without takes an empty part), and
    /// the shard's `global_rows` becomes the sum of the ranks' rows.
    pub fn next_part_step(&mut self, next: Option<Shard>) -> Result<Option<Shard>> {
        if self.size() == 1 {
            return Ok(next);
        }
        let rows = next.as_ref().and_then(|s| s.batch.as_ref()).map_or(0, Batch::rows) as u64;
        let mut message = vec![u8::from(next.is_some())];
        message.extend(rows.to_le_bytes());
        let votes = self.coll.all_gather(&message).map_err(dist_error)?;
        self.dense_bytes += message.len() as u64;
        let mut any = false;
        let mut global_rows = 0u64;
        for (r, v) in votes.iter().enumerate() {
            let (&more, n) = v
                .split_first()
                .filter(|(_, n)| n.len() == 8)
                .ok_or_else(|| TrainError::Distributed(format!("rank {r} sent a malformed step vote")))?;
            any |= more == 1;
            global_rows += u64::from_le_bytes(
                n.try_into()
                    .map_err(|_| TrainError::Distributed(format!("rank {r} sent a malformed step vote")))?,
            );
        }
        Ok(any.then(|| Shard {
            batch: next.and_then(|s| s.batch),
            global_rows: global_rows as usize,
        }))
    }

    /// From this rank's labelled-row count (weight sum, with sample
    /// weights) and masked-mean loss per task:
    /// the factor each local loss is multiplied by (so that the ranks'
    /// gradients sum to the gradient of the global batch's mean) and the
    /// global batch's loss per task.
    pub fn global_losses(&mut self, counts: &[f64], means: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let k = counts.len();
        if self.size() == 1 {
            return Ok((vec![1.0; k], means.to_vec()));
        }
        let mut buf: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        // The loss sum over the labelled rows (the mean's numerator; 0 when
        // the count is, as the mean is then 0).
        buf.extend(means.iter().zip(counts).map(|(&m, &c)| (m * c) as f32));
        self.coll.all_reduce_sum(&mut buf).map_err(dist_error)?;
        self.dense_bytes += 4 * buf.len() as u64;
        self.steps += 1;
        // A rank without labelled rows (or weight) has a zero loss without
        // gradient: its factor does not matter, 0 says so.
        let scales = counts
            .iter()
            .zip(&buf[..k])
            .map(|(&c, &g)| if c > 0.0 { c / f64::from(g) } else { 0.0 })
            .collect();
        let global = buf[..k]
            .iter()
            .zip(&buf[k..])
            .map(|(&g, &s)| if g > 0.0 { f64::from(s) / f64::from(g) } else { 0.0 })
            .collect();
        Ok((scales, global))
    }

    /// The union over the ranks of the table rows touched in this step.
    /// `tables`: the model's tables (`ParamStore::tables`, the same order on
    /// every rank).
    pub fn merge_rows(&mut self, tables: &[(String, Var)], touched: &[TouchedRows]) -> Result<Merged> {
        if self.size() == 1 {
            // The rows are the local ones ([`GradSync::reduce`] does nothing).
            return Ok(Merged {
                touched: touched.to_vec(),
                local: vec![None; touched.len()],
            });
        }
        // Per table (the model's order): row count, then the rows.
        let mut mine: Vec<u32> = Vec::new();
        for (name, _) in tables {
            match touched.iter().find(|t| &t.table == name) {
                Some(t) => {
                    mine.push(t.rows.len() as u32);
                    mine.extend(&t.rows);
                }
                None => mine.push(0),
            }
        }
        if let Some(t) = touched.iter().find(|t| !tables.iter().any(|(n, _)| n == &t.table)) {
            return Err(TrainError::Invalid(format!(
                "touched rows of unknown table `{}`",
                t.table
            )));
        }
        let gathered = self.coll.all_gather(bytemuck::cast_slice(&mine)).map_err(dist_error)?;
        self.sparse_bytes += 4 * mine.len() as u64;
        let per_rank: Vec<Vec<u32>> = gathered.iter().map(|b| bytemuck::pod_collect_to_vec(b)).collect();
        let mut cursors = vec![0usize; per_rank.len()];
        let mut merged = Merged::default();
        for (name, table) in tables {
            let mut union: Vec<u32> = Vec::new();
            for (r, ids) in per_rank.iter().enumerate() {
                let bad = || TrainError::Distributed(format!("rank {r} sent a malformed row-id message"));
                let n = *ids.get(cursors[r]).ok_or_else(bad)? as usize;
                let rows = ids.get(cursors[r] + 1..cursors[r] + 1 + n).ok_or_else(bad)?;
                union.extend_from_slice(rows);
                cursors[r] += 1 + n;
            }
            if union.is_empty() {
                continue;
            }
            union.sort_unstable();
            union.dedup();
            let local = touched.iter().position(|t| &t.table == name).map(|i| {
                let pos = touched[i]
                    .rows
                    .iter()
                    .map(|r| union.binary_search(r).unwrap_or(0))
                    .collect();
                (i, pos)
            });
            let index = Tensor::new(union.as_slice(), table.device())?;
            let values = Var::from_tensor(&table.as_detached_tensor().index_select(&index, 0)?)?;
            self.sparse_rows += union.len() as u64;
            merged.touched.push(TouchedRows {
                table: name.clone(),
                rows: union,
                values,
            });
            merged.local.push(local);
        }
        Ok(merged)
    }

    /// Replaces the gradients in `grads` by their sums over the ranks: the
    /// dense variables `dense`, and the table rows of `merged` (from this
    /// rank's `local` rows' gradients, stored under `merged`'s copies).
    pub fn reduce(
        &mut self,
        grads: &mut GradStore,
        dense: &[(String, Var)],
        local: &[TouchedRows],
        merged: &Merged,
    ) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let dense_len: usize = dense.iter().map(|(_, v)| 1 + v.elem_count()).sum();
        let sparse_len: usize = merged.touched.iter().map(|t| 1 + t.values.elem_count()).sum();
        let mut buf = vec![0f32; dense_len + sparse_len];
        let mut at = 0;
        for (name, v) in dense {
            let n = v.elem_count();
            if let Some(g) = grads.get(v.as_tensor()) {
                buf[at] = 1.0;
                buf[at + 1..at + 1 + n].copy_from_slice(&f32s(g, name)?);
            }
            at += 1 + n;
        }
        for (t, place) in merged.touched.iter().zip(&merged.local) {
            let dim = t.values.dims().get(1).copied().unwrap_or(1);
            if let Some((i, pos)) = place {
                if let Some(g) = grads.get(local[*i].values.as_tensor()) {
                    buf[at] = 1.0;
                    let g = f32s(g, &t.table)?;
                    for (j, &p) in pos.iter().enumerate() {
                        let dst = at + 1 + p * dim;
                        buf[dst..dst + dim].copy_from_slice(&g[j * dim..(j + 1) * dim]);
                    }
                }
            }
            at += 1 + t.values.elem_count();
        }
        self.coll.all_reduce_sum(&mut buf).map_err(dist_error)?;
        self.dense_bytes += 4 * dense_len as u64;
        self.sparse_bytes += 4 * sparse_len as u64;
        let mut at = 0;
        let vars = dense
            .iter()
            .map(|(_, v)| v)
            .chain(merged.touched.iter().map(|t| &t.values));
        for v in vars {
            let n = v.elem_count();
            if buf[at] > 0.0 {
                let g = Tensor::from_slice(&buf[at + 1..at + 1 + n], v.shape(), v.device())?;
                grads.insert(v.as_tensor(), g.to_dtype(v.dtype())?);
            }
            at += 1 + n;
        }
        Ok(())
    }

    /// Moving statistics (buffers) averaged over the ranks: each rank
    /// updated them from its own rows' batch statistics.
    pub fn average_buffers(&mut self, model: &Model) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let buffers = model.params().buffers();
        if buffers.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (name, v) in &buffers {
            buf.extend(f32s(v.as_tensor(), name)?);
        }
        self.coll.all_reduce_sum(&mut buf).map_err(dist_error)?;
        self.dense_bytes += 4 * buf.len() as u64;
        let inv = 1.0 / self.size() as f32;
        let mut at = 0;
        for (_, v) in &buffers {
            let n = v.elem_count();
            let mean: Vec<f32> = buf[at..at + n].iter().map(|x| x * inv).collect();
            v.set(&Tensor::from_vec(mean, v.shape(), v.device())?.to_dtype(v.dtype())?)?;
            at += n;
        }
        Ok(())
    }
}

/// A gradient's values as f32, row-major.
fn f32s(t: &Tensor, name: &str) -> Result<Vec<f32>> {
    match t.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        other => Err(TrainError::Invalid(format!(
            "`{name}` has dtype {other:?}; only float tensors are exchanged"
        ))),
    }
}

/// Each task's labelled-row count in a batch (task order).
pub(crate) fn mask_counts(batch: &mtrec_data::Batch) -> Result<Vec<f64>> {
    let masked = match &batch.weights {
        Some(w) => batch.masks.broadcast_mul(&w.unsqueeze(1)?)?,
        None => batch.masks.clone(),
    };
    let sums: Vec<f32> = masked.sum(0)?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(sums.into_iter().map(f64::from).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;
    use mtrec_distributed::ThreadRank;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ROWS: usize = 20;
    const DIM: usize = 3;

    /// Rank `rank`'s gradients: on `w` (ranks 0 and 1 only), on `v` (never),
    /// and on random rows of the table; returned as dense `[ROWS * DIM]`
    /// table gradient and `w`'s, plus what the exchange made of them.
    #[allow(clippy::type_complexity)]
    fn rank_step(c: ThreadRank) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>, bool) {
        let rank = c.rank();
        let mut rng = StdRng::seed_from_u64(rank as u64 + 7);
        let dev = Device::Cpu;
        let table = Var::from_vec(vec![0.5f32; ROWS * DIM], (ROWS, DIM), &dev).unwrap();
        let w = Var::from_vec(vec![0f32; 4], 4, &dev).unwrap();
        let v = Var::from_vec(vec![0f32; 2], 2, &dev).unwrap();
        let mut rows: Vec<u32> = (0..6).map(|_| rng.random_range(0..ROWS as u32)).collect();
        rows.sort_unstable();
        rows.dedup();
        let index = Tensor::new(rows.as_slice(), &dev).unwrap();
        let values = Var::from_tensor(&table.as_tensor().index_select(&index, 0).unwrap()).unwrap();
        let g_rows: Vec<f32> = (0..rows.len() * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        let g_w: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut dense_table = vec![0f32; ROWS * DIM];
        for (j, r) in rows.iter().enumerate() {
            for d in 0..DIM {
                dense_table[*r as usize * DIM + d] += g_rows[j * DIM + d];
            }
        }
        let mut grads = GradStore::default();
        grads.insert(
            values.as_tensor(),
            Tensor::from_slice(&g_rows, (rows.len(), DIM), &dev).unwrap(),
        );
        let mine_w = if rank < 2 {
            grads.insert(w.as_tensor(), Tensor::from_slice(&g_w, 4, &dev).unwrap());
            g_w
        } else {
            vec![0.0; 4]
        };
        let local = vec![TouchedRows {
            table: "emb".into(),
            rows,
            values,
        }];
        let mut sync = GradSync::new(std::rc::Rc::new(c));
        let merged = sync.merge_rows(&[("emb".into(), table)], &local).unwrap();
        let dense = vec![("v".to_string(), v.clone()), ("w".to_string(), w.clone())];
        sync.reduce(&mut grads, &dense, &local, &merged).unwrap();
        // The exchanged table gradient, scattered back to a dense table.
        let t = &merged.touched[0];
        let g: Vec<f32> = grads
            .get(t.values.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut exchanged = vec![0f32; ROWS * DIM];
        for (j, r) in t.rows.iter().enumerate() {
            exchanged[*r as usize * DIM..(*r as usize + 1) * DIM].copy_from_slice(&g[j * DIM..(j + 1) * DIM]);
        }
        let reduced_w = grads.get(w.as_tensor()).map(|g| g.to_vec1().unwrap());
        (
            dense_table,
            mine_w,
            exchanged,
            reduced_w,
            grads.get(v.as_tensor()).is_some(),
        )
    }

    #[test]
    fn sparse_rows_exchange_equals_the_dense_sum() {
        let results = ThreadRank::run(3, rank_step);
        let mut want_table = vec![0f32; ROWS * DIM];
        let mut want_w = vec![0f32; 4];
        for (t, w, ..) in &results {
            want_table.iter_mut().zip(t).for_each(|(a, b)| *a += b);
            want_w.iter_mut().zip(w).for_each(|(a, b)| *a += b);
        }
        for (rank, (_, _, exchanged, w, has_v)) in results.iter().enumerate() {
            for (a, b) in exchanged.iter().zip(&want_table) {
                assert!((a - b).abs() < 1e-6, "rank {rank}: {exchanged:?} vs {want_table:?}");
            }
            // Present on two ranks: summed and present on all three.
            let w = w.as_ref().unwrap();
            for (a, b) in w.iter().zip(&want_w) {
                assert!((a - b).abs() < 1e-6);
            }
            // No rank's gradient reached `v`: it stays without one.
            assert!(!has_v, "rank {rank}");
            // Bit-identical on every rank.
            assert_eq!(exchanged, &results[0].2);
        }
    }

    #[test]
    fn global_loss_is_the_mean_over_the_global_rows() {
        let results = ThreadRank::run(2, |c| {
            let rank = c.rank();
            let mut sync = GradSync::new(std::rc::Rc::new(c));
            // Rank 0: 3 labelled rows of task 0 with mean 1; rank 1:
            // 1 row with loss 5, and no labelled row of task 1.
            let (counts, means) = if rank == 0 {
                (vec![3.0, 2.0], vec![1.0, 2.0])
            } else {
                (vec![1.0, 0.0], vec![5.0, 0.0])
            };
            sync.global_losses(&counts, &means).unwrap()
        });
        // Task 0: (3 * 1 + 5) / 4 = 2; task 1: 2 * 2 / 2 = 2.
        assert_eq!(results[0].1, vec![2.0, 2.0]);
        assert_eq!(results[1].1, vec![2.0, 2.0]);
        // Scales: local rows over global rows (the mean's numerator split);
        // 0 for rank 1's task 1, which has no labelled row (no gradient).
        assert_eq!(results[0].0, vec![0.75, 1.0]);
        assert_eq!(results[1].0, vec![0.25, 0.0]);
    }

    #[test]
    fn weighted_global_loss_uses_the_weight_sums() {
        let results = ThreadRank::run(2, |c| {
            let rank = c.rank();
            let mut sync = GradSync::new(std::rc::Rc::new(c));
            // Weight sums below 1 must not be rounded up to one row:
            // rank 0 weighs 0.5 with mean 2, rank 1 weighs 1.5 with mean 4.
            let (weights, means) = if rank == 0 {
                (vec![0.5], vec![2.0])
            } else {
                (vec![1.5], vec![4.0])
            };
            sync.global_losses(&weights, &means).unwrap()
        });
        // (0.5 * 2 + 1.5 * 4) / 2 = 3.5; scales 0.5 / 2 and 1.5 / 2.
        for (rank, want) in [(0, 0.25), (1, 0.75)] {
            assert_eq!(results[rank].1, vec![3.5]);
            assert_eq!(results[rank].0, vec![want]);
        }
    }
}
