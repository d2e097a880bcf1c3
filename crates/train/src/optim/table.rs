//! Row-sparse optimizers for embedding tables: a step updates the rows the
//! batch touched (`mtrec_core::TouchedRows`) and nothing else, so its cost
//! and the optimizer state it reads follow the batch, not the vocabulary.
//!
//! - **Lazy Adam** (TF's `LazyAdam`, PyTorch's `SparseAdam`): Adam on the
//!   touched rows. Each row keeps its own step count, so a row's moments and
//!   its bias correction advance only when the row is touched; an untouched
//!   row, its moments and its step stay bit-identical. When every row is
//!   touched at every step this is exactly the dense [`Adam`](super::Adam)
//!   (same per-element kernel, same coefficients). PyTorch's `SparseAdam`
//!   and TF's `LazyAdam` use the global step for the bias correction of every
//!   row instead; a per-row step keeps a rare row's first updates as large as
//!   a frequent row's, which is what bias correction is for. Weight decay
//!   (`weight_decay`) is decoupled, `p *= 1 - lr * wd`, applied to a row when
//!   it is updated. State: 2 x dim floats and one `u32` per row.
//! - **Row-wise Adagrad** (FBGEMM's `EXACT_ROWWISE_ADAGRAD`, TorchRec's
//!   default for embeddings): one accumulator per row,
//!   `a += mean_j(g_j^2)`, `p -= lr * g / (sqrt(a) + eps)`. Weight decay is
//!   L2, `g += wd * p`, on the touched rows. State: one float per row.
//! - **SGD**: `p -= lr * (g + wd * p)` on the touched rows. No state.
//!
//! Decay only when touched is deliberate: decaying every row at every step
//! would cost a pass over the table per step, and would pull rare ids to
//! zero between their appearances.
//!
//! # Rows per GiB
//! A row of width `d` holds `4 d` bytes of weights; the optimizer adds
//! `8 d + 4` bytes (lazy Adam), `4` (row-wise Adagrad) or nothing (SGD).
//! At `d = 16`: 5.5M rows per GiB with lazy Adam, 15.7M with row-wise
//! Adagrad, 16.8M with SGD (the best-epoch copy the trainer keeps adds
//! another `4 d` per row). State is allocated zeroed (`calloc`), so memory
//! pages of rows never touched are not resident.
//!
//! # Checkpoint keys (beside the dense Adam's, see [`super::Optimizer`])
//! `sparse:{table}.mv` `[rows, 2, dim]` f32 (first then second moment of
//! each row) and `sparse:{table}.row_step` `[rows]` u32 for lazy Adam;
//! `sparse:{table}.acc` `[rows]` f32 for row-wise Adagrad; nothing for SGD.

use std::borrow::Cow;
use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Var};
use serde::{Deserialize, Serialize};

use super::adam::{adam_kernel, AdamConfig, Coeffs, F32Coeffs};
use crate::error::{Result, TrainError};

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn adagrad_eps() -> f64 {
    1e-8
}

/// How an embedding table is trained: `[train] embedding_optimizer` for
/// every table, `[train.table_optimizers]` per table by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TableOptimizerConfig {
    /// Adam on the touched rows, each row with its own step count.
    LazyAdam {
        /// Absent: `[train] lr`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        #[serde(default = "beta1")]
        beta1: f64,
        #[serde(default = "beta2")]
        beta2: f64,
        #[serde(default = "adam_eps")]
        eps: f64,
        /// Decoupled decay of a row when it is updated; 0 disables.
        #[serde(default)]
        weight_decay: f64,
    },
    /// One accumulator per row (FBGEMM / TorchRec's default).
    RowwiseAdagrad {
        /// Absent: 0.01 (FBGEMM's default; Adagrad wants a larger step than Adam).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        #[serde(default = "adagrad_eps")]
        eps: f64,
        /// L2 decay added to a touched row's gradient; 0 disables.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Plain SGD on the touched rows.
    Sgd {
        /// Absent: 0.01.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        /// L2 decay added to a touched row's gradient; 0 disables.
        #[serde(default)]
        weight_decay: f64,
    },
}

impl Default for TableOptimizerConfig {
    fn default() -> Self {
        Self::LazyAdam {
            lr: None,
            beta1: beta1(),
            beta2: beta2(),
            eps: adam_eps(),
            weight_decay: 0.0,
        }
    }
}

/// The default learning rate of the kinds that do not take `[train] lr`.
const OWN_DEFAULT_LR: f64 = 0.01;

impl TableOptimizerConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::LazyAdam { .. } => "lazy-adam",
            Self::RowwiseAdagrad { .. } => "rowwise-adagrad",
            Self::Sgd { .. } => "sgd",
        }
    }

    /// The learning rate in force, given `[train] lr`.
    pub fn lr(&self, train_lr: f64) -> f64 {
        match self {
            Self::LazyAdam { lr, .. } => lr.unwrap_or(train_lr),
            Self::RowwiseAdagrad { lr, .. } | Self::Sgd { lr, .. } => lr.unwrap_or(OWN_DEFAULT_LR),
        }
    }

    /// Checks the hyper-parameters' ranges; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{key} must be a positive number, got {v}"))
            }
        };
        let non_negative = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{key} must be >= 0, got {v}"))
            }
        };
        let lr = match self {
            Self::LazyAdam { lr, .. } | Self::RowwiseAdagrad { lr, .. } | Self::Sgd { lr, .. } => *lr,
        };
        if let Some(lr) = lr {
            positive("lr", lr)?;
        }
        match *self {
            Self::LazyAdam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (key, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(format!("{key} must be in [0, 1), got {b}"));
                    }
                }
                non_negative("eps", eps)?;
                non_negative("weight_decay", weight_decay)
            }
            Self::RowwiseAdagrad { eps, weight_decay, .. } => {
                positive("eps", eps)?;
                non_negative("weight_decay", weight_decay)
            }
            Self::Sgd { weight_decay, .. } => non_negative("weight_decay", weight_decay),
        }
    }
}

/// The state of one table's optimizer.
enum State {
    LazyAdam {
        config: AdamConfig,
        /// `[rows, 2, dim]`: a row's first then second moment, side by side
        /// so that one row's state is one contiguous block (one or two cache
        /// lines at small widths, read once per touched row).
        moments: Vec<f32>,
        steps: Vec<u32>,
    },
    RowwiseAdagrad {
        lr: f32,
        eps: f32,
        weight_decay: f32,
        acc: Vec<f32>,
    },
    Sgd {
        lr: f32,
        weight_decay: f32,
    },
}

/// The optimizer of one embedding table.
pub struct TableOptimizer {
    name: String,
    table: Var,
    rows: usize,
    dim: usize,
    state: State,
}

impl std::fmt::Debug for TableOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableOptimizer")
            .field("table", &self.name)
            .field("kind", &self.kind())
            .finish()
    }
}

/// One named piece of a table optimizer's state, as written to a checkpoint.
pub(super) struct StatePart<'a> {
    pub suffix: &'static str,
    pub shape: Vec<usize>,
    pub data: StateData<'a>,
}

pub(super) enum StateData<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
}

impl StateData<'_> {
    /// Little-endian bytes (safetensors' byte order), borrowed where the
    /// machine's order is already that.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            StateData::F32(v) if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(v)),
            StateData::U32(v) if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(v)),
            StateData::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            StateData::U32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
}

impl TableOptimizer {
    /// An optimizer for `table` (`[rows, dim]`, f32 on the CPU) with zeroed state.
    pub fn new(name: &str, table: Var, config: &TableOptimizerConfig, train_lr: f64) -> Result<Self> {
        config
            .validate()
            .map_err(|m| TrainError::Invalid(format!("optimizer of table `{name}`: {m}")))?;
        let (rows, dim) = table.dims2()?;
        if table.dtype() != candle_core::DType::F32 || !table.device().is_cpu() {
            return Err(TrainError::Invalid(format!(
                "embedding table `{name}` must be f32 on the CPU for its row-sparse optimizer"
            )));
        }
        let lr = config.lr(train_lr);
        let state = match *config {
            TableOptimizerConfig::LazyAdam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => State::LazyAdam {
                config: AdamConfig {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled: true,
                },
                moments: vec![0.0; rows * 2 * dim],
                steps: vec![0; rows],
            },
            TableOptimizerConfig::RowwiseAdagrad { eps, weight_decay, .. } => State::RowwiseAdagrad {
                lr: lr as f32,
                eps: eps as f32,
                weight_decay: weight_decay as f32,
                acc: vec![0.0; rows],
            },
            TableOptimizerConfig::Sgd { weight_decay, .. } => State::Sgd {
                lr: lr as f32,
                weight_decay: weight_decay as f32,
            },
        };
        Ok(Self {
            name: name.to_string(),
            table,
            rows,
            dim,
            state,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `lazy-adam`, `rowwise-adagrad` or `sgd`.
    pub fn kind(&self) -> &'static str {
        match self.state {
            State::LazyAdam { .. } => "lazy-adam",
            State::RowwiseAdagrad { .. } => "rowwise-adagrad",
            State::Sgd { .. } => "sgd",
        }
    }

    /// Bytes of optimizer state (what "only as large as its kind needs" means).
    pub fn state_bytes(&self) -> usize {
        match &self.state {
            State::LazyAdam { moments, steps, .. } => 4 * (moments.len() + steps.len()),
            State::RowwiseAdagrad { acc, .. } => 4 * acc.len(),
            State::Sgd { .. } => 0,
        }
    }

    /// Lazy Adam's step count of `row` (tests, diagnostics).
    pub fn row_step(&self, row: usize) -> Option<u32> {
        match &self.state {
            State::LazyAdam { steps, .. } => steps.get(row).copied(),
            _ => None,
        }
    }

    /// Updates the table rows `rows` (unique) with their gradient rows
    /// `grad` (`[rows.len(), dim]` row-major). Checked before anything
    /// changes: a row outside the table or a gradient of the wrong length is
    /// an error and the table and state stay as they were.
    pub fn step(&mut self, rows: &[u32], grad: &[f32]) -> Result<()> {
        if grad.len() != rows.len() * self.dim {
            return Err(TrainError::Invalid(format!(
                "table `{}`: {} gradient values for {} rows of width {}",
                self.name,
                grad.len(),
                rows.len(),
                self.dim
            )));
        }
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= self.rows) {
            return Err(TrainError::Invalid(format!(
                "table `{}`: row {bad} is outside its {} rows",
                self.name, self.rows
            )));
        }
        let op = RowUpdate {
            rows,
            grad,
            dim: self.dim,
            state: RefCell::new(&mut self.state),
        };
        self.table.as_tensor().inplace_op1(&op)?;
        Ok(())
    }

    /// The state to checkpoint: (key suffix, shape, data).
    pub(super) fn state_parts(&self) -> Vec<StatePart<'_>> {
        match &self.state {
            State::LazyAdam { moments, steps, .. } => vec![
                StatePart {
                    suffix: "mv",
                    shape: vec![self.rows, 2, self.dim],
                    data: StateData::F32(moments),
                },
                StatePart {
                    suffix: "row_step",
                    shape: vec![self.rows],
                    data: StateData::U32(steps),
                },
            ],
            State::RowwiseAdagrad { acc, .. } => vec![StatePart {
                suffix: "acc",
                shape: vec![self.rows],
                data: StateData::F32(acc),
            }],
            State::Sgd { .. } => Vec::new(),
        }
    }

    /// The key suffixes [`TableOptimizer::state_parts`] writes for this kind.
    pub(super) fn suffixes(&self) -> &'static [&'static str] {
        match self.state {
            State::LazyAdam { .. } => &["mv", "row_step"],
            State::RowwiseAdagrad { .. } => &["acc"],
            State::Sgd { .. } => &[],
        }
    }

    /// `(rows, dim)` of the table.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.dim)
    }

    /// Checks checkpointed state (`f32s` / `u32s` by suffix, shapes and
    /// dtypes already checked by the caller) before [`TableOptimizer::restore`]:
    /// every part present, moments finite, second moments and accumulators
    /// non-negative.
    pub(super) fn check_restore(
        &self,
        f32s: &[(&str, Vec<f32>)],
        u32s: &[(&str, Vec<u32>)],
    ) -> std::result::Result<(), String> {
        let f = |s: &str| f32s.iter().find(|(k, _)| *k == s).map(|(_, v)| v);
        let u = |s: &str| u32s.iter().find(|(k, _)| *k == s).map(|(_, v)| v);
        match &self.state {
            State::LazyAdam { .. } => {
                let (Some(mv), Some(_)) = (f("mv"), u("row_step")) else {
                    return Err("lazy Adam state incomplete".into());
                };
                check_moments(mv, self.dim)
            }
            State::RowwiseAdagrad { .. } => {
                let Some(a) = f("acc") else {
                    return Err("row-wise Adagrad state incomplete".into());
                };
                match a.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
                    Some((i, x)) => Err(format!("accumulator of row {i} is {x}")),
                    None => Ok(()),
                }
            }
            State::Sgd { .. } => Ok(()),
        }
    }

    /// Takes over state that passed [`TableOptimizer::check_restore`].
    pub(super) fn restore(&mut self, f32s: Vec<(&str, Vec<f32>)>, u32s: Vec<(&str, Vec<u32>)>) {
        for (suffix, v) in f32s {
            match (&mut self.state, suffix) {
                (State::LazyAdam { moments, .. }, "mv") => *moments = v,
                (State::RowwiseAdagrad { acc, .. }, "acc") => *acc = v,
                _ => {}
            }
        }
        for (suffix, v) in u32s {
            if let (State::LazyAdam { steps, .. }, "row_step") = (&mut self.state, suffix) {
                *steps = v;
            }
        }
    }
}

/// First moments finite, second moments finite and non-negative.
fn check_moments(mv: &[f32], dim: usize) -> std::result::Result<(), String> {
    for (r, row) in mv.chunks_exact(2 * dim.max(1)).enumerate() {
        let (m, v) = row.split_at(dim);
        if m.iter().any(|x| !x.is_finite()) || v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(format!(
                "moments of row {r} are not finite (or a second moment is negative)"
            ));
        }
    }
    Ok(())
}

/// The in-place row update: the table is the destination; rows, gradient
/// and state are borrowed for the call.
struct RowUpdate<'a> {
    rows: &'a [u32],
    grad: &'a [f32],
    dim: usize,
    state: RefCell<&'a mut State>,
}

impl InplaceOp1 for RowUpdate<'_> {
    fn name(&self) -> &'static str {
        "mtrec-table-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let fail = |msg: &str| Err(candle_core::Error::Msg(format!("mtrec-table-update: {msg}")));
        let CpuStorage::F32(table) = storage else {
            return fail("the table must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            return fail("the table must be contiguous");
        };
        let Some(table) = table.get_mut(start..end) else {
            return fail("layout out of the storage's bounds");
        };
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return fail("state already in use");
        };
        let d = self.dim;
        let rows = self.rows.iter().map(|&r| r as usize).zip(self.grad.chunks_exact(d));
        match &mut **state {
            State::LazyAdam { config, moments, steps } => {
                let kernel = if config.weight_decay == 0.0 {
                    adam_kernel::<false, false>
                } else {
                    adam_kernel::<false, true>
                };
                // Rows touched at the same step count share coefficients:
                // computed once per distinct count (powf is the costly part).
                let mut last: Option<(u32, F32Coeffs)> = None;
                for (r, g) in rows {
                    let t = steps[r].saturating_add(1);
                    steps[r] = t;
                    let c = match last {
                        Some((lt, c)) if lt == t => c,
                        _ => {
                            let c = F32Coeffs::from(&Coeffs::new(config, u64::from(t)));
                            last = Some((t, c));
                            c
                        }
                    };
                    let (m, v) = moments[r * 2 * d..(r + 1) * 2 * d].split_at_mut(d);
                    kernel(&mut table[r * d..(r + 1) * d], g, m, v, &c);
                }
            }
            State::RowwiseAdagrad {
                lr,
                eps,
                weight_decay,
                acc,
            } => {
                let (lr, eps, wd) = (*lr, *eps, *weight_decay);
                for (r, g) in rows {
                    let p = &mut table[r * d..(r + 1) * d];
                    let g: Cow<'_, [f32]> = if wd == 0.0 {
                        Cow::Borrowed(g)
                    } else {
                        Cow::Owned(g.iter().zip(p.iter()).map(|(g, p)| g + wd * p).collect())
                    };
                    let mean_square = g.iter().map(|x| x * x).sum::<f32>() / d as f32;
                    acc[r] += mean_square;
                    let step = lr / (acc[r].sqrt() + eps);
                    for (p, g) in p.iter_mut().zip(g.iter()) {
                        *p -= step * g;
                    }
                }
            }
            State::Sgd { lr, weight_decay } => {
                let (lr, wd) = (*lr, *weight_decay);
                for (r, g) in rows {
                    for (p, g) in table[r * d..(r + 1) * d].iter_mut().zip(g) {
                        *p -= lr * (g + wd * *p);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::optim::Adam;
    use candle_core::backprop::GradStore;
    use candle_core::{Device, Tensor};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ROWS: usize = 6;
    const DIM: usize = 3;

    fn table(seed: u64) -> Var {
        let mut rng = StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..ROWS * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        Var::from_vec(v, (ROWS, DIM), &Device::Cpu).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn lazy(weight_decay: f64) -> TableOptimizerConfig {
        TableOptimizerConfig::LazyAdam {
            lr: Some(0.01),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn lazy_adam_touching_every_row_is_dense_adam_bit_for_bit() {
        for wd in [0.0, 0.1] {
            let sparse_table = table(1);
            let dense_table = table(1);
            let mut sparse = TableOptimizer::new("t", sparse_table.clone(), &lazy(wd), 1.0).unwrap();
            let mut dense = Adam::new(
                vec![("t".into(), dense_table.clone())],
                AdamConfig {
                    lr: 0.01,
                    weight_decay: wd,
                    decoupled: true,
                    ..AdamConfig::default()
                },
            )
            .unwrap();
            let mut rng = StdRng::seed_from_u64(2);
            let all: Vec<u32> = (0..ROWS as u32).collect();
            for _ in 0..25 {
                let g: Vec<f32> = (0..ROWS * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
                sparse.step(&all, &g).unwrap();
                let mut store = GradStore::default();
                store.insert(
                    dense_table.as_tensor(),
                    Tensor::from_vec(g, (ROWS, DIM), &Device::Cpu).unwrap(),
                );
                dense.step(&store).unwrap();
            }
            let (a, b) = (values(&sparse_table), values(&dense_table));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "wd {wd}: {a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn lazy_adam_leaves_untouched_rows_moments_and_steps_alone() {
        let t = table(3);
        let mut o = TableOptimizer::new("t", t.clone(), &lazy(0.1), 1.0).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        let mut g = |n: usize| -> Vec<f32> { (0..n * DIM).map(|_| rng.random_range(-1.0..1.0)).collect() };
        o.step(&[0, 2, 5], &g(3)).unwrap();
        let before = values(&t);
        let state_before: Vec<f32> = match &o.state {
            State::LazyAdam { moments, .. } => moments.clone(),
            _ => unreachable!(),
        };
        o.step(&[2], &g(1)).unwrap();
        o.step(&[2, 5], &g(2)).unwrap();
        let after = values(&t);
        let State::LazyAdam { moments, .. } = &o.state else {
            unreachable!()
        };
        for r in [0, 1, 3, 4] {
            let row = r * DIM..(r + 1) * DIM;
            assert_eq!(before[row.clone()], after[row], "row {r} values");
            let st = r * 2 * DIM..(r + 1) * 2 * DIM;
            assert_eq!(state_before[st.clone()], moments[st], "row {r} moments");
        }
        assert_eq!(
            (0..ROWS).map(|r| o.row_step(r).unwrap()).collect::<Vec<_>>(),
            [1, 0, 3, 0, 0, 2]
        );
        assert_ne!(before[2 * DIM..3 * DIM], after[2 * DIM..3 * DIM]);
    }

    #[test]
    fn lazy_adam_first_update_of_a_late_row_is_bias_corrected_from_one() {
        // Adam's first step moves every element by lr * sign(g) (up to eps):
        // also for a row first touched after many steps of other rows.
        let t = table(5);
        let mut o = TableOptimizer::new("t", t.clone(), &lazy(0.0), 1.0).unwrap();
        for _ in 0..50 {
            o.step(&[0], &[1.0, 1.0, 1.0]).unwrap();
        }
        let before = values(&t);
        o.step(&[4], &[0.5, -2.0, 1e-3]).unwrap();
        let after = values(&t);
        for (j, sign) in [-1.0f32, 1.0, -1.0].iter().enumerate() {
            let moved = after[4 * DIM + j] - before[4 * DIM + j];
            assert!((moved - sign * 0.01).abs() < 1e-5, "element {j}: moved {moved}");
        }
    }

    #[test]
    fn rowwise_adagrad_hand_computed() {
        let t = Var::from_vec(vec![1.0f32, 2.0, 0.0, 0.0, -1.0, 0.5], (2, 3), &Device::Cpu).unwrap();
        let cfg = TableOptimizerConfig::RowwiseAdagrad {
            lr: Some(0.1),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut o = TableOptimizer::new("t", t.clone(), &cfg, 1.0).unwrap();
        assert_eq!(o.state_bytes(), 2 * 4, "one float per row");
        // Row 1, g = [3, 0, 4]: a = (9 + 16) / 3; p -= 0.1 g / sqrt(a).
        o.step(&[1], &[3.0, 0.0, 4.0]).unwrap();
        let a1 = 25.0f32 / 3.0;
        let s1 = 0.1 / a1.sqrt();
        let v = values(&t);
        assert_eq!(v[..3], [1.0, 2.0, 0.0], "row 0 untouched");
        let want = [-3.0 * s1, -1.0, 0.5 - 4.0 * s1];
        for (got, want) in v[3..].iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
        // Second step, g = [0, 3, 0]: a = a1 + 3; the step shrinks.
        o.step(&[1], &[0.0, 3.0, 0.0]).unwrap();
        let s2 = 0.1 / (a1 + 3.0).sqrt();
        let v2 = values(&t);
        assert!((v2[4] - (-1.0 - 3.0 * s2)).abs() < 1e-6, "{v2:?}");
        assert!(s2 < s1);
    }

    #[test]
    fn sgd_with_l2_hand_computed() {
        let t = Var::from_vec(vec![1.0f32, -2.0], (2, 1), &Device::Cpu).unwrap();
        let cfg = TableOptimizerConfig::Sgd {
            lr: Some(0.5),
            weight_decay: 0.1,
        };
        let mut o = TableOptimizer::new("t", t.clone(), &cfg, 1.0).unwrap();
        assert_eq!(o.state_bytes(), 0);
        o.step(&[1], &[4.0]).unwrap();
        // -2 - 0.5 * (4 + 0.1 * -2) = -3.9
        assert_eq!(values(&t), [1.0, -3.9]);
    }

    #[test]
    fn bad_rows_or_gradients_change_nothing() {
        let t = table(6);
        let mut o = TableOptimizer::new("t", t.clone(), &lazy(0.0), 1.0).unwrap();
        let before = values(&t);
        let e = o.step(&[1, ROWS as u32], &[0.0; 2 * DIM]).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        let e = o.step(&[1], &[0.0; DIM + 1]).unwrap_err().to_string();
        assert!(e.contains("gradient values"), "{e}");
        assert_eq!(values(&t), before);
        assert_eq!(o.row_step(1), Some(0));
    }

    #[test]
    fn config_defaults_ranges_and_toml() {
        let c: TableOptimizerConfig = toml::from_str("kind = \"rowwise-adagrad\"").unwrap();
        assert_eq!(c.lr(0.001), 0.01);
        assert_eq!(TableOptimizerConfig::default().lr(0.002), 0.002);
        let e = toml::from_str::<TableOptimizerConfig>("kind = \"lazy-adam\"\nbeta3 = 1").unwrap_err();
        assert!(e.to_string().contains("beta3"), "{e}");
        let c: TableOptimizerConfig = toml::from_str("kind = \"lazy-adam\"\nbeta1 = 1.0").unwrap();
        assert!(c.validate().unwrap_err().contains("beta1"));
        let c: TableOptimizerConfig = toml::from_str("kind = \"sgd\"\nlr = -1.0").unwrap();
        assert!(c.validate().unwrap_err().contains("lr"));
    }
}
