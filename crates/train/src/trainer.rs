//! The training loop: epochs of seeded mini-batches, masked per-task losses,
//! Adam, optional clipping, early stopping on the validation score.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use mtrec_core::Model;
use mtrec_data::{shuffled, Batch, Dataset, Part, Split, StreamedData};
use mtrec_distributed::shard_range;
use serde::{Deserialize, Serialize};

use crate::balance::{task_losses, weighted_backward, Balancer, BalancerConfig, PairConflict};
use crate::checkpoint::{Checkpointer, TrainState};
use crate::clip::clip_grad_norm;
use crate::error::{Result, TrainError};
use crate::evaluate::{evaluate_batches_with, evaluate_with, EvalConfig, Evaluation};
use crate::optim::{AdamConfig, Optimizer, TableOptimizerConfig};
use crate::parts::{memory_shards, streamed_shards, TrainParts};
use crate::sync::{dist_error, Exchange, GradSync};

/// The `[train]` section of a config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Maximum number of passes over the training rows.
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub lr: f64,
    /// Weight decay; 0 disables it.
    pub weight_decay: f64,
    /// `true`: decoupled (AdamW, `theta -= lr * wd * theta`); `false`: L2
    /// added to the gradient, as PyTorch's `Adam(weight_decay=..)`, which
    /// through Adam's scaling shrinks rarely-updated weights (e.g. rare
    /// categories' embeddings) much more.
    pub decoupled_weight_decay: bool,
    /// Clip the global gradient norm to this value; absent: no clipping.
    pub clip_norm: Option<f64>,
    /// Stop after this many epochs without a better validation score
    /// (mean AUC of binary tasks / -MSE of regression tasks); 0: never stop early.
    pub patience: usize,
    /// Seeds weight initialisation and batch order.
    pub seed: u64,
    /// Per-task loss weights by task name; missing tasks weigh 1 (used by
    /// the `fixed` and `pcgrad` balancers).
    pub task_weights: BTreeMap<String, f64>,
    /// How task losses are combined (`crate::balance`); default `fixed`.
    pub balancer: BalancerConfig,
    /// Every this many batches of an epoch, record the cosine between the
    /// tasks' gradients on the shared parameters; 0 disables.
    pub conflict_every: usize,
    /// How every embedding table is trained (row-sparse: only the rows a
    /// batch touches); default lazy Adam with `lr`. `lr`, `weight_decay` and
    /// `decoupled_weight_decay` above apply to the dense weights only.
    pub embedding_optimizer: TableOptimizerConfig,
    /// Per embedding table, by its parameter name (`features.embedding.dim16`,
    /// `features.sequence.<name>`, `features.domain`): another optimizer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub table_optimizers: BTreeMap<String, TableOptimizerConfig>,
    /// How validation metrics are computed (weighted or not): the config's
    /// `[eval]` section, set by the runner; not a `[train]` key.
    #[serde(skip)]
    pub eval: EvalConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 256,
            eval_batch_size: 4096,
            lr: 1e-3,
            weight_decay: 0.0,
            decoupled_weight_decay: true,
            clip_norm: None,
            patience: 5,
            seed: 1,
            task_weights: BTreeMap::new(),
            balancer: BalancerConfig::Fixed,
            conflict_every: 50,
            embedding_optimizer: TableOptimizerConfig::default(),
            table_optimizers: BTreeMap::new(),
            eval: EvalConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks values no model could train with; names the key and the fix.
    pub fn validate(&self, task_names: &[String]) -> Result<()> {
        let bad = |key: &str, msg: String| Err(TrainError::Config(format!("[train] {key}: {msg}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("must be a positive number, got {}", self.lr));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("clip_norm", format!("must be positive, got {c}"));
            }
        }
        for (name, w) in &self.task_weights {
            if !task_names.contains(name) {
                return bad(
                    "task_weights",
                    format!("unknown task `{name}`; the tasks are: {}", task_names.join(", ")),
                );
            }
            if !(w.is_finite() && *w >= 0.0) {
                return bad("task_weights", format!("weight of `{name}` must be >= 0, got {w}"));
            }
        }
        if let Err(msg) = self.embedding_optimizer.validate() {
            return bad("embedding_optimizer", msg);
        }
        for (table, o) in &self.table_optimizers {
            if let Err(msg) = o.validate() {
                return bad("table_optimizers", format!("`{table}`: {msg}"));
            }
        }
        let has_weights = self.task_weights.values().any(|w| *w != 1.0);
        if let Err(msg) = self.balancer.validate(has_weights) {
            return bad("balancer", msg);
        }
        Ok(())
    }
}

/// One epoch's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Mean training loss per task (task order), over the epoch's batches.
    pub train_loss: Vec<f64>,
    pub valid: Evaluation,
    pub valid_score: f64,
    pub rows_per_second: f64,
    /// The balancer's task weights at the end of the epoch (task order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_weights: Vec<f64>,
    /// Gradient cosine per task pair on the shared parameters, over the
    /// epoch's sampled batches (`conflict_every`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflict: Vec<PairConflict>,
    /// Bytes exchanged between ranks per step (distributed runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<Exchange>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub history: Vec<EpochLog>,
    /// 1-based epoch whose weights the model holds at the end.
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub train_seconds: f64,
    /// Gradient conflict per task pair over the whole run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflict: Vec<PairConflict>,
}

/// The best validation score so far, its epoch, and a deep copy of the weights.
type Best = (f64, usize, Vec<(String, Tensor)>);

/// One optimisation step on a batch; returns the per-task losses.
/// The scalar losses as f64 (one device read per task), for the logs and
/// the balancers.
pub(crate) fn loss_values(losses: &[Tensor]) -> Result<Vec<f64>> {
    losses.iter().map(|l| Ok(l.to_scalar::<f32>()? as f64)).collect()
}

pub fn train_step(
    model: &Model,
    opt: &mut Optimizer,
    batch: &mtrec_data::Batch,
    weights: &[f64],
    clip: Option<f64>,
) -> Result<Vec<f64>> {
    let crate::balance::BatchLosses {
        tasks: losses,
        touched,
        penalty,
    } = task_losses(model, batch)?;
    let values = loss_values(&losses)?;
    let mut grads = weighted_backward(&losses, weights, penalty.as_ref())?;
    if let Some(max) = clip {
        clip_grad_norm(&mut grads, &step_vars(model, &touched), max)?;
    }
    opt.step(&grads, &touched)?;
    Ok(values)
}

/// The variables one step's gradients are for: the model's dense variables
/// and the copies of the table rows the batch touched (named by table).
pub(crate) fn step_vars(model: &Model, touched: &[mtrec_core::TouchedRows]) -> Vec<(String, candle_core::Var)> {
    let mut vars = model.params().vars();
    vars.extend(touched.iter().map(|t| (t.table.clone(), t.values.clone())));
    vars
}

/// Builds the optimizers for a model and a config: Adam(W) for the dense
/// variables, `[train] embedding_optimizer` / `table_optimizers` for the
/// embedding tables.
pub fn optimizer(model: &Model, cfg: &TrainConfig) -> Result<Optimizer> {
    let acfg = AdamConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        decoupled: cfg.decoupled_weight_decay,
        ..AdamConfig::default()
    };
    Optimizer::new(model, acfg, &cfg.embedding_optimizer, &cfg.table_optimizers)
}

/// Progress within an epoch, for progress bars.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    pub epoch: usize,
    pub rows_done: usize,
    /// Rows of the epoch; 0 while unknown (a streamed file's first pass).
    pub rows_total: usize,
    /// This batch's loss per task.
    pub losses: Vec<f64>,
}

/// Options of [`train_with`].
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Save a checkpoint after every epoch into this folder.
    pub checkpoint: Option<Checkpointer>,
    /// Continue from the checkpoint folder's last finished epoch.
    pub resume: bool,
    /// Called after every training batch.
    pub on_batch: Option<&'a mut dyn FnMut(&BatchProgress)>,
    /// Start the optimizer from this saved state (warm start: a trained
    /// run's last checkpoint, [`Checkpointer::last_optimizer`]) instead of
    /// a fresh one; a resumed run loads its own checkpoint's instead.
    pub init_optimizer: Option<PathBuf>,
}

/// Where an epoch's training batches and the validation metrics come from:
/// rows in memory ([`InMemory`]) or files streamed on every pass
/// ([`Streamed`]). The training loop ([`train_on`]) is the same for both.
pub trait TrainSource {
    /// Rank `rank`'s parts of the global batches of `epoch` (1-based) for a
    /// run on `ranks` ranks, in training order. The global batches are
    /// those of one process with `ranks * cfg.batch_size` rows, and rank r's
    /// part is [`shard_range`] of each (`None` when a short last batch leaves
    /// it no row). The order must be a function of `cfg.seed` and `epoch`
    /// only, so that a resumed run replays an uninterrupted one (and every
    /// rank forms the same global batches).
    fn epoch_shards<'s>(
        &'s self,
        epoch: usize,
        cfg: &TrainConfig,
        device: &Device,
        rank: usize,
        ranks: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Shard>> + 's>>;

    /// The training batches of `epoch` of a one-process run.
    fn epoch_batches<'s>(
        &'s self,
        epoch: usize,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<Box<dyn Iterator<Item = Result<Batch>> + 's>> {
        // With one rank a shard is never empty: it is the whole batch.
        let shards = self.epoch_shards(epoch, cfg, device, 0, 1)?;
        Ok(Box::new(shards.filter_map(|s| s.map(|s| s.batch).transpose())))
    }

    /// Training rows per epoch, when known before the epoch is read.
    fn epoch_rows(&self) -> Option<usize>;

    /// Whether each rank trains on its own part of the training rows
    /// ([`TrainParts`], `[data] shards`): ranks may then run out of rows
    /// at different steps, and the step loop goes on while any rank has
    /// rows, summing the global batch's rows over the ranks.
    fn own_parts(&self) -> bool {
        false
    }

    /// Told the rows of all ranks that an epoch trained on.
    fn epoch_done(&self, _rows: usize) {}

    /// The model's metrics on the validation rows.
    fn validate(&self, model: &Model, cfg: &TrainConfig) -> Result<Evaluation>;
}

/// A rank's part of one global training batch.
#[derive(Debug)]
pub struct Shard {
    /// This rank's rows; `None` when it has none.
    pub batch: Option<Batch>,
    /// Rows of the global batch (all ranks).
    pub global_rows: usize,
}

/// The one-process batch size that `ranks` ranks with `cfg.batch_size`
/// each replay.
fn global_cfg(cfg: &TrainConfig, ranks: usize) -> TrainConfig {
    TrainConfig {
        batch_size: cfg.batch_size.max(1) * ranks.max(1),
        ..cfg.clone()
    }
}

/// The seed of epoch `epoch`'s order: a different, reproducible order each epoch.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)
}

/// Rows in memory: a dataset and its split; each epoch a seeded permutation
/// of the train rows, or of each part's ([`TrainParts`]).
#[derive(Clone, Copy, Debug)]
pub struct InMemory<'a> {
    pub data: &'a Dataset,
    pub split: &'a Split,
    /// The training rows divided into parts (`[data] shards`); `None`: one
    /// permutation of `split.train`.
    pub parts: Option<&'a TrainParts>,
}

impl<'a> InMemory<'a> {
    pub fn new(data: &'a Dataset, split: &'a Split) -> Self {
        Self {
            data,
            split,
            parts: None,
        }
    }

    /// The same rows, trained in the order of these parts.
    pub fn with_parts(self, parts: &'a TrainParts) -> Self {
        Self {
            parts: Some(parts),
            ..self
        }
    }
}

impl TrainSource for InMemory<'_> {
    fn epoch_shards<'s>(
        &'s self,
        epoch: usize,
        cfg: &TrainConfig,
        device: &Device,
        rank: usize,
        ranks: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Shard>> + 's>> {
        if let Some(parts) = self.parts {
            return memory_shards(self.data, parts, epoch, cfg, device, rank, ranks);
        }
        let train = &self.split.train;
        let perm = shuffled(train.len(), epoch_seed(cfg.seed, epoch));
        let order: Vec<usize> = perm.iter().map(|&i| train[i]).collect();
        let size = global_cfg(cfg, ranks).batch_size;
        let device = device.clone();
        let data = self.data;
        Ok(Box::new((0..order.len().div_ceil(size)).map(move |b| {
            let global = &order[b * size..((b + 1) * size).min(order.len())];
            let rows = &global[shard_range(global.len(), rank, ranks)];
            Ok(Shard {
                batch: if rows.is_empty() {
                    None
                } else {
                    Some(data.batch(rows, &device)?)
                },
                global_rows: global.len(),
            })
        })))
    }

    fn epoch_rows(&self) -> Option<usize> {
        Some(self.parts.map_or(self.split.train.len(), |p| p.sizes.iter().sum()))
    }

    fn own_parts(&self) -> bool {
        self.parts.is_some()
    }

    fn validate(&self, model: &Model, cfg: &TrainConfig) -> Result<Evaluation> {
        evaluate_with(model, self.data, &self.split.valid, cfg.eval_batch_size, cfg.eval)
    }
}

/// Files streamed on every pass ([`StreamedData`]): each epoch re-reads the
/// training rows chunk by chunk through the seeded shuffle buffer; the
/// validation rows are read in file order, in batches of `eval_batch_size`.
#[derive(Debug)]
pub struct Streamed<'a> {
    pub data: &'a StreamedData,
    /// The training rows' parts (`[data] shards`; 1: one stream of them
    /// all); see [`crate::parts`].
    parts: usize,
    /// Training rows handed out in the current (or last) epoch.
    read: Cell<usize>,
    /// Training rows of the last whole epoch, once one was read.
    last: Cell<Option<usize>>,
}

impl<'a> Streamed<'a> {
    pub fn new(data: &'a StreamedData) -> Self {
        Self {
            data,
            parts: 1,
            read: Cell::new(0),
            last: Cell::new(None),
        }
    }

    /// The same files, trained in the order of `parts` parts (each rank of
    /// a run on `parts` ranks reading its own, [`StreamedData::train_stripe`]).
    pub fn with_parts(self, parts: usize) -> Self {
        Self {
            parts: parts.max(1),
            ..self
        }
    }

    /// Training rows read by the latest epoch (the size of the train part
    /// once an epoch has finished); `None` before any epoch.
    pub fn rows_read(&self) -> Option<usize> {
        (self.read.get() > 0).then(|| self.read.get()).or(self.last.get())
    }
}

impl TrainSource for Streamed<'_> {
    fn epoch_shards<'s>(
        &'s self,
        epoch: usize,
        cfg: &TrainConfig,
        device: &Device,
        rank: usize,
        ranks: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<Shard>> + 's>> {
        if self.read.get() > 0 {
            self.last.set(Some(self.read.get()));
        }
        self.read.set(0);
        if self.parts > 1 {
            // Rows counted over all ranks by the step loop (epoch_done).
            return streamed_shards(self.data, self.parts, epoch, cfg, device, rank, ranks);
        }
        let device = device.clone();
        // Read and encoded on a thread of its own, overlapping training.
        // Every rank reads the whole stream through the same seeded shuffle
        // buffer, so that the global batches are one process's; each keeps
        // its part (reading, not training, is repeated on every rank).
        let size = global_cfg(cfg, ranks).batch_size;
        let batches = self
            .data
            .prefetched_batches(Part::Train, size, Some(epoch_seed(cfg.seed, epoch)))?;
        Ok(Box::new(batches.map(move |b| {
            let b = b?;
            self.read.set(self.read.get() + b.rows());
            let rows: Vec<usize> = shard_range(b.rows(), rank, ranks).collect();
            Ok(Shard {
                global_rows: b.rows(),
                batch: if rows.is_empty() {
                    None
                } else if rows.len() == b.rows() {
                    Some(b.to_batch(&device)?)
                } else {
                    Some(b.try_subset(&rows)?.to_batch(&device)?)
                },
            })
        })))
    }

    fn epoch_rows(&self) -> Option<usize> {
        self.last.get()
    }

    fn own_parts(&self) -> bool {
        self.parts > 1
    }

    fn epoch_done(&self, rows: usize) {
        if self.parts > 1 {
            self.last.set(Some(rows));
        }
    }

    fn validate(&self, model: &Model, cfg: &TrainConfig) -> Result<Evaluation> {
        let batches = self.data.batches(Part::Valid, cfg.eval_batch_size, None);
        let names = self.data.preprocessor.domain.as_ref().map(|d| d.names.as_slice());
        evaluate_batches_with(model, batches, names, cfg.eval)
    }
}

/// Trains `model` on `split.train`, early-stopping on `split.valid`; at the
/// end the model holds the weights of its best validation epoch.
pub fn train(
    model: &Model,
    data: &Dataset,
    split: &Split,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochLog),
) -> Result<TrainOutcome> {
    train_with(model, data, split, cfg, TrainOptions::default(), on_epoch)
}

fn snapshot(model: &Model) -> Result<Vec<(String, Tensor)>> {
    // A deep copy: the optimizers update variables and tables in place.
    // Buffers too (e.g. normalization moving averages, updated in place by
    // training forwards): they belong to these weights.
    model
        .params()
        .all()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
        .collect()
}

/// Errors (naming the first differing rank) unless every rank holds the same
/// training config, parameter names and shapes, and weights.
fn check_ranks_agree(
    collective: &dyn mtrec_distributed::Collective,
    model: &Model,
    cfg: &TrainConfig,
    what: &str,
) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let mut text = serde_json::to_vec(cfg).map_err(|e| TrainError::Invalid(e.to_string()))?;
    for (name, v) in model.params().all() {
        text.extend(name.as_bytes());
        text.extend(format!("{:?}", v.dims()).as_bytes());
        text.extend(tensor_fingerprint(v.as_tensor())?.to_le_bytes());
    }
    mtrec_distributed::check_same(collective, what, &text).map_err(dist_error)
}

/// [`weights_fingerprint`] of a tensor, read in place when it is a
/// contiguous f32 CPU tensor (tables can hold gigabytes).
fn tensor_fingerprint(t: &Tensor) -> Result<u64> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Some(xs) = data.get(a..b) {
                return Ok(weights_fingerprint(xs));
            }
        }
    }
    let values: Vec<f32> = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    Ok(weights_fingerprint(&values))
}

/// A 64-bit fingerprint of f32 values' bits (FNV-1a over 32-bit words:
/// tables of millions of rows are fingerprinted every epoch).
fn weights_fingerprint(values: &[f32]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// [`train`] with checkpoints, resumption and per-batch progress. A resumed
/// run ends with the same weights and history as an uninterrupted one: batch
/// order is a function of the seed and the epoch, and the optimizer state is
/// restored with the weights.
pub fn train_with(
    model: &Model,
    data: &Dataset,
    split: &Split,
    cfg: &TrainConfig,
    opts: TrainOptions<'_>,
    on_epoch: impl FnMut(&EpochLog),
) -> Result<TrainOutcome> {
    train_on(model, &InMemory::new(data, split), cfg, opts, on_epoch)
}

/// The training loop over any [`TrainSource`]: per epoch, every batch goes
/// through the balancer's step (losses, backward, clipping, Adam), then the
/// validation metrics decide early stopping and the best weights; a
/// checkpoint is saved after every epoch. Resuming restarts at the epoch
/// after the checkpoint's (weights, optimizer state, best weights and
/// history restored; see [`Checkpointer`]).
pub fn train_on(
    model: &Model,
    source: &dyn TrainSource,
    cfg: &TrainConfig,
    mut opts: TrainOptions<'_>,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<TrainOutcome> {
    let names: Vec<String> = model.tasks().iter().map(|t| t.name.clone()).collect();
    cfg.validate(&names)?;
    let collective = mtrec_distributed::current();
    let (rank, ranks) = (collective.rank(), collective.size());
    let mut sync = GradSync::new(collective.clone());
    // Ranks must train the same model the same way from the same weights.
    check_ranks_agree(
        collective.as_ref(),
        model,
        cfg,
        "the [train] config, model and initial weights",
    )?;
    let mut balancer = Balancer::new(model, cfg)?;
    let mut opt = optimizer(model, cfg)?;
    if let (Some(path), false) = (&opts.init_optimizer, opts.resume) {
        opt.load(path)?;
    }
    let started = Instant::now();
    let mut history = Vec::new();
    let mut best: Option<Best> = None;
    let mut stopped_early = false;
    let mut first_epoch = 1;
    let mut seconds_before = 0.0;
    let mut rows_seen: Option<usize> = None;
    if opts.resume {
        let ckpt = opts
            .checkpoint
            .as_ref()
            .ok_or_else(|| TrainError::Config("resume needs a checkpoint folder".into()))?;
        let resumed = ckpt.load(model, &mut opt, &mut balancer)?;
        let trained_on = resumed.state.ranks.unwrap_or(1);
        if trained_on != ranks {
            return Err(TrainError::Config(format!(
                "the run was trained on {trained_on} rank(s) and is resumed on {ranks}: the number of ranks sets \
                 the global batch (ranks x batch_size), so resume it with the same number (mpirun -np {trained_on})"
            )));
        }
        first_epoch = resumed.state.epoch + 1;
        seconds_before = resumed.state.train_seconds;
        best = Some((resumed.state.best_score, resumed.state.best_epoch, resumed.best));
        history = resumed.state.history;
        for log in &history {
            on_epoch(log);
        }
        if let Some((_, e, _)) = &best {
            stopped_early = cfg.patience > 0 && history.len() - e >= cfg.patience;
        }
    }
    for epoch in first_epoch..=cfg.epochs {
        if stopped_early {
            break;
        }
        let t0 = Instant::now();
        let mut sums = vec![0.0; names.len()];
        let mut batches = 0usize;
        let mut done = 0usize;
        // A streamed file's size is known after its first pass.
        let rows_total = source.epoch_rows().or(rows_seen).unwrap_or(0);
        balancer.begin_epoch(epoch, &history);
        let mut shards = source.epoch_shards(epoch, cfg, model.device(), rank, ranks)?;
        loop {
            let next = shards.next().transpose()?;
            let step = if source.own_parts() {
                sync.next_part_step(next)?
            } else {
                sync.next_step(next, epoch)?
            };
            let Some(shard) = step else {
                break;
            };
            model.set_step(opt.dense().step_count());
            let losses = balancer.step_shard(model, &mut opt, shard.batch.as_ref(), cfg.clip_norm, &mut sync)?;
            if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
                return Err(TrainError::Diverged {
                    epoch,
                    task: names[bad].clone(),
                });
            }
            done += shard.global_rows;
            if let Some(f) = opts.on_batch.as_mut() {
                f(&BatchProgress {
                    epoch,
                    rows_done: done,
                    rows_total,
                    losses: losses.clone(),
                });
            }
            for (s, l) in sums.iter_mut().zip(losses) {
                *s += l;
            }
            batches += 1;
        }
        rows_seen = Some(done);
        source.epoch_done(done);
        let exchange = sync.take_exchange();
        // Every rank applied the same sums: a difference means a bug or a
        // rank that ran something else, caught here rather than in results.
        check_ranks_agree(
            collective.as_ref(),
            model,
            cfg,
            &format!("the weights after epoch {epoch}"),
        )?;
        let rows_per_second = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let valid = source.validate(model, cfg)?;
        let valid_score = valid.score();
        let log = EpochLog {
            epoch,
            train_loss: sums.iter().map(|s| s / batches.max(1) as f64).collect(),
            valid,
            valid_score,
            rows_per_second,
            task_weights: balancer.weights(),
            conflict: balancer.end_epoch(),
            exchange,
        };
        on_epoch(&log);
        history.push(log);
        if best.as_ref().is_none_or(|(s, _, _)| valid_score > *s) {
            best = Some((valid_score, epoch, snapshot(model)?));
        } else if cfg.patience > 0 && best.as_ref().is_some_and(|(_, e, _)| epoch - e >= cfg.patience) {
            stopped_early = true;
        }
        // Rank 0 alone writes; a resume reads its checkpoint on every rank.
        let writer = opts.checkpoint.as_ref().filter(|_| collective.is_root());
        if let (Some(ckpt), Some((score, best_epoch, weights))) = (writer, &best) {
            let state = TrainState {
                epoch,
                best_epoch: *best_epoch,
                best_score: *score,
                history: history.clone(),
                train_seconds: seconds_before + started.elapsed().as_secs_f64(),
                balancer: Some(balancer.kind().to_string()),
                ranks: (ranks > 1).then_some(ranks),
            };
            ckpt.save(model, &opt, &balancer, weights, &state)?;
        }
    }
    let mut best_epoch = history.len();
    if let Some((_, epoch, snapshot)) = best {
        let vars: BTreeMap<String, candle_core::Var> = model.params().all().into_iter().collect();
        for (name, t) in snapshot {
            if let Some(v) = vars.get(&name) {
                v.set(&t)?;
            }
        }
        best_epoch = epoch;
    }
    let conflict = PairConflict::merge(&history.iter().map(|h| h.conflict.as_slice()).collect::<Vec<_>>());
    Ok(TrainOutcome {
        conflict,
        history,
        best_epoch,
        stopped_early,
        train_seconds: seconds_before + started.elapsed().as_secs_f64(),
    })
}
