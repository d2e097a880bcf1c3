//! Loss balancing: how the per-task losses of a batch become one update,
//! and the gradient-conflict diagnostics (cosine between per-task gradients
//! on the shared parameters).
//!
//! Chosen with `[train] balancer = { kind = "...", ... }`:
//! - `fixed` (default): `L = sum_k w_k L_k` with `[train] task_weights`.
//! - `uncertainty`: Kendall, Gal, Cipolla, "Multi-Task Learning Using
//!   Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
//! - `dwa`: Liu, Johns, Davison, "End-to-End Multi-Task Learning with
//!   Attention" (Dynamic Weight Average), CVPR 2019.
//! - `gradnorm`: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient
//!   Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
//!   ICML 2018.
//! - `pcgrad`: Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for
//!   Multi-Task Learning", NeurIPS 2020.
//!
//! "Shared parameters" are the variables that receive a gradient from more
//! than one task; the set is computed once, on the first batch that needs
//! per-task gradients (one backward pass per task).
//!
//! State of the learned balancers (uncertainty's `s_k` and their Adam
//! moments, GradNorm's weights, initial losses and Adam moments) is saved in
//! checkpoints ([`Balancer::state_tensors`]) so that `--resume` continues it
//! exactly. DWA's weights come from the loss history (saved with it) and
//! PCGrad's order from (seed, epoch), so neither needs more.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};
use mtrec_core::{loss, Model, TouchedRows};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::clip::clip_grad_norm;
use crate::error::{Result, TrainError};
use crate::optim::{Adam, AdamConfig, Optimizer};
use crate::sync::GradSync;
use crate::trainer::{EpochLog, TrainConfig};

fn two() -> f64 {
    2.0
}
fn gradnorm_alpha() -> f64 {
    1.5
}
fn gradnorm_lr() -> f64 {
    0.025
}

/// `[train] balancer`: how task losses are combined.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BalancerConfig {
    /// `L = sum_k w_k L_k` with the fixed `[train] task_weights` (missing: 1).
    #[default]
    Fixed,
    /// Kendall et al. 2018: learned `s_k = log sigma_k^2` (trainable, Adam
    /// with the model's learning rate), `L = sum_k exp(-s_k) L_k / 2 + s_k / 2`.
    Uncertainty {
        /// Initial `s_k` (0: every task weighs 1/2).
        #[serde(default)]
        init: f64,
    },
    /// Liu et al. 2019: `w_k = K exp(r_k / T) / sum_j exp(r_j / T)` with
    /// `r_k = L_k(t-1) / L_k(t-2)` (mean training losses of the last two
    /// epochs); weights 1 in the first two epochs.
    Dwa {
        /// `T`; the paper uses 2.
        #[serde(default = "two")]
        temperature: f64,
    },
    /// Chen et al. 2018: task weights learned so that the weighted tasks'
    /// gradient norms on the last shared layer's weights approach
    /// `mean_norm * r_k^alpha` (detached targets); renormalised to sum to K.
    Gradnorm {
        /// Restoring force towards equal training rates; the paper uses 0.12-3.
        #[serde(default = "gradnorm_alpha")]
        alpha: f64,
        /// Learning rate of the task weights (Adam).
        #[serde(default = "gradnorm_lr")]
        lr: f64,
    },
    /// Yu et al. 2020: one gradient per task (one backward each); each task's
    /// gradient on the shared parameters is projected onto the normal plane
    /// of every other task's gradient it conflicts with, in a random (seeded)
    /// order, then summed. Task weights `[train] task_weights` scale the losses.
    Pcgrad,
}

impl BalancerConfig {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Uncertainty { .. } => "uncertainty",
            Self::Dwa { .. } => "dwa",
            Self::Gradnorm { .. } => "gradnorm",
            Self::Pcgrad => "pcgrad",
        }
    }

    /// Checks the hyper-parameters; `has_task_weights`: fixed weights other
    /// than 1 were configured (only `fixed` and `pcgrad` use them).
    pub fn validate(&self, has_task_weights: bool) -> std::result::Result<(), String> {
        match self {
            Self::Fixed | Self::Pcgrad => return Ok(()),
            Self::Uncertainty { init } if !init.is_finite() => return Err(format!("init must be finite, got {init}")),
            Self::Dwa { temperature } if !(temperature.is_finite() && *temperature > 0.0) => {
                return Err(format!("temperature must be positive, got {temperature}"))
            }
            Self::Gradnorm { alpha, lr } => {
                if !(alpha.is_finite() && *alpha >= 0.0) {
                    return Err(format!("alpha must be >= 0, got {alpha}"));
                }
                if !(lr.is_finite() && *lr > 0.0) {
                    return Err(format!("lr must be positive, got {lr}"));
                }
            }
            _ => {}
        }
        if has_task_weights {
            return Err(format!(
                "kind = \"{}\" sets the task weights itself; remove task_weights (and [[tasks]] weight) or use kind = \"fixed\"",
                self.name()
            ));
        }
        Ok(())
    }
}

/// Gradient conflict between two tasks on the shared parameters, over the
/// sampled steps of an epoch (or of the run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PairConflict {
    pub a: String,
    pub b: String,
    /// Mean cosine similarity of the two tasks' gradients.
    pub mean_cosine: f64,
    /// Share of sampled steps with a negative cosine.
    pub negative_share: f64,
    /// Number of sampled steps.
    pub samples: usize,
}

impl PairConflict {
    /// Merges the per-epoch records into one per pair (weighted by samples).
    pub fn merge(epochs: &[&[PairConflict]]) -> Vec<PairConflict> {
        let mut acc: BTreeMap<(String, String), (f64, f64, usize)> = BTreeMap::new();
        let mut order = Vec::new();
        for e in epochs {
            for p in *e {
                let key = (p.a.clone(), p.b.clone());
                let entry = acc.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    (0.0, 0.0, 0)
                });
                entry.0 += p.mean_cosine * p.samples as f64;
                entry.1 += p.negative_share * p.samples as f64;
                entry.2 += p.samples;
            }
        }
        order
            .into_iter()
            .filter_map(|k| {
                let (c, n, s) = acc.get(&k)?;
                Some(PairConflict {
                    a: k.0.clone(),
                    b: k.1.clone(),
                    mean_cosine: c / (*s).max(1) as f64,
                    negative_share: n / (*s).max(1) as f64,
                    samples: *s,
                })
            })
            .collect()
    }
}

/// What a training pass on a batch gives the balancers.
pub struct BatchLosses {
    /// Each task's masked loss (task order), as tensors on the graph.
    pub tasks: Vec<Tensor>,
    /// The embedding-table rows the pass read (whose copies' gradients are
    /// the tables' row-sparse gradients).
    pub touched: Vec<TouchedRows>,
    /// The sum of the penalty terms the components added
    /// ([`mtrec_core::ForwardCtx::add_penalty`]), if any: added to the
    /// objective outside the balancing of the task losses.
    pub penalty: Option<Tensor>,
}

/// The losses of one training pass on a batch.
pub fn task_losses(model: &Model, batch: &mtrec_data::Batch) -> Result<BatchLosses> {
    let out = model.forward(&batch.inputs, true)?;
    let mut losses = Vec::with_capacity(out.outputs.len());
    for (k, (task, o)) in model.tasks().iter().zip(&out.outputs).enumerate() {
        let labels = batch.labels.narrow(D::Minus1, k, 1)?.squeeze(1)?;
        let mask = batch.masks.narrow(D::Minus1, k, 1)?.squeeze(1)?;
        losses.push(loss::weighted_task_loss(
            task.kind,
            o,
            &labels,
            &mask,
            batch.weights.as_ref(),
        )?);
    }
    if losses.is_empty() {
        return Err(TrainError::Config("the model has no task".into()));
    }
    let mut penalty: Option<Tensor> = None;
    for p in out.penalties {
        penalty = Some(match penalty {
            None => p.value,
            Some(sum) => (sum + p.value)?,
        });
    }
    Ok(BatchLosses {
        tasks: losses,
        touched: out.touched,
        penalty,
    })
}

/// Kendall et al.'s objective `sum_k exp(-s_k) L_k / 2 + s_k / 2` for
/// `losses` and `s` of shape `[K]`: finite for any finite `s` (no log of a weight).
pub fn uncertainty_loss(losses: &Tensor, s: &Tensor) -> Result<Tensor> {
    let weighted = (losses * s.neg()?.exp()?)?.sum_all()?;
    Ok(((weighted + s.sum_all()?)? * 0.5)?)
}

/// [`uncertainty_loss`] on one of `ranks` ranks' parts of a batch: the
/// regulariser `s_k / 2` is split between the ranks (`s_k / (2 ranks)` each),
/// so that the ranks' gradients of `s` sum to those of one process.
pub fn uncertainty_loss_over(losses: &Tensor, s: &Tensor, ranks: usize) -> Result<Tensor> {
    if ranks <= 1 {
        return uncertainty_loss(losses, s);
    }
    let weighted = (losses * s.neg()?.exp()?)?.sum_all()?;
    Ok(((weighted + (s.sum_all()? / ranks as f64)?)? * 0.5)?)
}

/// DWA weights from the mean losses of the last (`prev`) and the one before
/// (`prev2`) epochs: `K softmax(r / T)` with `r_k = prev_k / prev2_k`; they sum to K.
pub fn dwa_weights(prev: &[f64], prev2: &[f64], temperature: f64) -> Vec<f64> {
    let k = prev.len();
    let r: Vec<f64> = prev
        .iter()
        .zip(prev2)
        .map(|(a, b)| (if *b > 0.0 && a.is_finite() { a / b } else { 1.0 }) / temperature)
        .collect();
    let max = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = r.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| k as f64 * x / sum).collect()
}

/// PCGrad's projection: `grads` are the tasks' flattened gradients on the
/// shared parameters (`[P]` each). For each task i, for every other task j in
/// a random order: if `g_i . g_j < 0`, `g_i -= (g_i . g_j) / |g_j|^2 g_j`
/// (with `g_j` the original gradient, as in the paper). Returns the projected
/// gradients (their sum is the update).
pub fn pcgrad_project(grads: &[Tensor], rng: &mut StdRng) -> Result<Vec<Tensor>> {
    let k = grads.len();
    let sq: Vec<f64> = grads
        .iter()
        .map(|g| Ok(g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let mut gi = grads[i].clone();
        let mut others: Vec<usize> = (0..k).filter(|&j| j != i).collect();
        others.shuffle(rng);
        for j in others {
            if sq[j] <= 0.0 {
                continue;
            }
            let dot = (&gi * &grads[j])?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if dot < 0.0 {
                gi = (gi - (&grads[j] * (dot / sq[j]))?)?;
            }
        }
        out.push(gi);
    }
    Ok(out)
}

/// GradNorm's task weights and the Adam state of their update.
#[derive(Clone, Debug)]
pub struct GradNormState {
    pub weights: Vec<f64>,
    alpha: f64,
    lr: f64,
    initial: Option<Vec<f64>>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl GradNormState {
    pub fn new(k: usize, alpha: f64, lr: f64) -> Self {
        Self {
            weights: vec![1.0; k],
            alpha,
            lr,
            initial: None,
            m: vec![0.0; k],
            v: vec![0.0; k],
            t: 0,
        }
    }

    /// One update from this step's losses and the norms `n_k = |grad_W L_k|`
    /// of the unweighted task gradients on the last shared layer `W`.
    /// `G_k = w_k n_k`; target `mean(G) r_k^alpha` is a constant (detached),
    /// so `d/dw_k sum_j |G_j - target_j| = sign(G_k - target_k) n_k`.
    /// Weights stay positive and are renormalised to sum to K.
    pub fn update(&mut self, losses: &[f64], norms: &[f64]) {
        let k = self.weights.len();
        let initial = self.initial.get_or_insert_with(|| losses.to_vec());
        let ratio: Vec<f64> = losses
            .iter()
            .zip(initial.iter())
            .map(|(l, l0)| if *l0 > 0.0 { l / l0 } else { 1.0 })
            .collect();
        let mean_ratio = ratio.iter().sum::<f64>() / k as f64;
        let g: Vec<f64> = self.weights.iter().zip(norms).map(|(w, n)| w * n).collect();
        let mean_g = g.iter().sum::<f64>() / k as f64;
        self.t += 1;
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        for i in 0..k {
            let r = if mean_ratio > 0.0 { ratio[i] / mean_ratio } else { 1.0 };
            let target = mean_g * r.powf(self.alpha);
            let grad = (g[i] - target).signum() * norms[i];
            if !grad.is_finite() {
                continue;
            }
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad * grad;
            let mh = self.m[i] / (1.0 - b1.powi(self.t));
            let vh = self.v[i] / (1.0 - b2.powi(self.t));
            self.weights[i] -= self.lr * mh / (vh.sqrt() + eps);
        }
        for w in &mut self.weights {
            if !(w.is_finite() && *w > 1e-3) {
                *w = 1e-3;
            }
        }
        let sum: f64 = self.weights.iter().sum();
        for w in &mut self.weights {
            *w *= k as f64 / sum;
        }
    }
}

/// The variables that receive a gradient from at least two of the per-task
/// gradient stores, by name (sorted).
pub fn shared_vars(vars: &[(String, Var)], per_task: &[GradStore]) -> Vec<(String, Var)> {
    vars.iter()
        .filter(|(_, v)| per_task.iter().filter(|g| g.get(v.as_tensor()).is_some()).count() >= 2)
        .cloned()
        .collect()
}

/// The weight of the last shared layer: among the shared variables, the
/// `*weight` of the deepest graph node (evaluation depth; feature tables
/// count as depth 0), the last one by name within it.
pub fn last_shared_layer(model: &Model, shared: &[(String, Var)]) -> Option<(String, Var)> {
    let nodes = &model.graph().nodes;
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    // The graph is acyclic (validated): |nodes| relaxation rounds suffice.
    for _ in 0..=nodes.len() {
        for n in nodes {
            let d = n
                .inputs
                .iter()
                .chain(&n.experts)
                .map(|s| depth.get(s.as_str()).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
                + 1;
            depth.insert(n.id.as_str(), d);
        }
    }
    let key = |name: &str| -> (usize, bool, String) {
        let node = name.split('.').next().unwrap_or("");
        (
            depth.get(node).copied().unwrap_or(0),
            name.ends_with("weight"),
            name.to_string(),
        )
    };
    shared.iter().max_by_key(|(n, _)| key(n)).cloned()
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Flattens one task's gradients on `vars` into one `[P]` tensor (zeros where
/// the task does not reach a variable).
fn flatten(store: &GradStore, vars: &[(String, Var)]) -> Result<Tensor> {
    let parts = vars
        .iter()
        .map(|(_, v)| match store.get(v.as_tensor()) {
            Some(g) => Ok(g.flatten_all()?),
            None => Ok(v.as_tensor().zeros_like()?.flatten_all()?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Pairwise cosine of flattened gradients: `(i, j, cos)` for i < j.
pub fn pairwise_cosine(flat: &[Tensor]) -> Result<Vec<(usize, usize, f64)>> {
    let norms = flat
        .iter()
        .map(|g| Ok(scalar(&g.sqr()?.sum_all()?)?.sqrt()))
        .collect::<Result<Vec<f64>>>()?;
    let mut out = Vec::new();
    for i in 0..flat.len() {
        for j in i + 1..flat.len() {
            let dot = scalar(&(&flat[i] * &flat[j])?.sum_all()?)?;
            let den = norms[i] * norms[j];
            out.push((i, j, if den > 0.0 { dot / den } else { 0.0 }));
        }
    }
    Ok(out)
}

const UNCERTAINTY_S: &str = "uncertainty.s";
const UNCERTAINTY_ADAM: &str = "uncertainty.adam.";
const GRADNORM_WEIGHTS: &str = "gradnorm.weights";
const GRADNORM_M: &str = "gradnorm.m";
const GRADNORM_V: &str = "gradnorm.v";
const GRADNORM_STEP: &str = "gradnorm.step";
const GRADNORM_INITIAL: &str = "gradnorm.initial";

enum State {
    Fixed,
    Uncertainty { s: Var, opt: Adam },
    Dwa { temperature: f64, weights: Vec<f64> },
    GradNorm(GradNormState),
    PcGrad,
}

/// The running balancer of one training run.
pub struct Balancer {
    state: State,
    task_names: Vec<String>,
    fixed: Vec<f64>,
    seed: u64,
    conflict_every: usize,
    /// Dense variables feeding two or more tasks (`Model::shared_vars`).
    shared: Vec<(String, Var)>,
    layer: Option<(String, Var)>,
    rng: StdRng,
    batch_in_epoch: usize,
    /// Per pair (i < j): sum of cosines, negatives, samples.
    acc: Vec<(usize, usize, f64, usize, usize)>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("weights", &self.weights()).finish()
    }
}

impl Balancer {
    pub fn new(model: &Model, cfg: &TrainConfig) -> Result<Self> {
        let task_names: Vec<String> = model.tasks().iter().map(|t| t.name.clone()).collect();
        let k = task_names.len();
        let fixed: Vec<f64> = task_names
            .iter()
            .map(|n| cfg.task_weights.get(n).copied().unwrap_or(1.0))
            .collect();
        let state = match &cfg.balancer {
            BalancerConfig::Fixed => State::Fixed,
            BalancerConfig::Uncertainty { init } => {
                let s = Var::from_tensor(&Tensor::full(*init as f32, k, model.device())?)?;
                let opt = Adam::new(
                    vec![("balance.s".into(), s.clone())],
                    AdamConfig {
                        lr: cfg.lr,
                        ..AdamConfig::default()
                    },
                )?;
                State::Uncertainty { s, opt }
            }
            BalancerConfig::Dwa { temperature } => State::Dwa {
                temperature: *temperature,
                weights: vec![1.0; k],
            },
            BalancerConfig::Gradnorm { alpha, lr } => State::GradNorm(GradNormState::new(k, *alpha, *lr)),
            BalancerConfig::Pcgrad => State::PcGrad,
        };
        // From the model's structure, once: a batch's gradients would miss
        // parameters it does not reach (e.g. an absent domain's).
        let shared = model.shared_vars();
        Ok(Self {
            layer: last_shared_layer(model, &shared),
            state,
            task_names,
            fixed,
            seed: cfg.seed,
            conflict_every: cfg.conflict_every,
            shared,
            rng: StdRng::seed_from_u64(cfg.seed),
            batch_in_epoch: 0,
            acc: Vec::new(),
        })
    }

    /// The configured kind (`fixed`, `uncertainty`, `dwa`, `gradnorm`, `pcgrad`).
    pub fn kind(&self) -> &'static str {
        match &self.state {
            State::Fixed => "fixed",
            State::Uncertainty { .. } => "uncertainty",
            State::Dwa { .. } => "dwa",
            State::GradNorm(_) => "gradnorm",
            State::PcGrad => "pcgrad",
        }
    }

    /// The learned state a resumed run needs, as named tensors (empty for the
    /// kinds that have none: `fixed`, `dwa` whose weights come from the loss
    /// history, `pcgrad` whose order comes from (seed, epoch)). f64 values
    /// are stored as f64 so that a resumed run is bit-identical.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        match &self.state {
            State::Fixed | State::Dwa { .. } | State::PcGrad => {}
            State::Uncertainty { s, opt } => {
                out.insert(UNCERTAINTY_S.to_string(), s.as_tensor().copy()?);
                for (k, t) in opt.state_tensors()? {
                    out.insert(format!("{UNCERTAINTY_ADAM}{k}"), t);
                }
            }
            State::GradNorm(g) => {
                let vec = |v: &[f64]| Tensor::from_slice(v, v.len(), &Device::Cpu);
                out.insert(GRADNORM_WEIGHTS.into(), vec(&g.weights)?);
                out.insert(GRADNORM_M.into(), vec(&g.m)?);
                out.insert(GRADNORM_V.into(), vec(&g.v)?);
                out.insert(GRADNORM_STEP.into(), vec(&[f64::from(g.t)])?);
                if let Some(initial) = &g.initial {
                    out.insert(GRADNORM_INITIAL.into(), vec(initial)?);
                }
            }
        }
        Ok(out)
    }

    /// Restores [`Balancer::state_tensors`]. Strict: every key of this
    /// kind must be present with K values and nothing else; otherwise
    /// [`TrainError::Checkpoint`] naming `origin` and the key, and the
    /// balancer is left unchanged.
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        let k = self.task_names.len();
        let bad = |message: String| TrainError::checkpoint(origin, message);
        let kind = self.kind();
        let get = |key: &str| -> Result<Vec<f64>> {
            let t = state
                .get(key)
                .ok_or_else(|| bad(format!("missing balancer key `{key}` (balancer `{kind}`)")))?;
            t.flatten_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(|e| bad(format!("balancer key `{key}`: {e}")))
        };
        let sized = |key: &str, n: usize| -> Result<Vec<f64>> {
            let v = get(key)?;
            if v.len() != n {
                return Err(bad(format!(
                    "balancer key `{key}` holds {} values, this model needs {n} (one per task)",
                    v.len()
                )));
            }
            Ok(v)
        };
        // Checked before anything changes: a bad file leaves the balancer as it was.
        let unexpected = |allowed: &dyn Fn(&str) -> bool| -> Result<()> {
            match state.keys().find(|key| !allowed(key)) {
                Some(extra) => Err(bad(format!("unexpected balancer key `{extra}` for balancer `{kind}`"))),
                None => Ok(()),
            }
        };
        match &mut self.state {
            State::Fixed | State::Dwa { .. } | State::PcGrad => unexpected(&|_| false),
            State::Uncertainty { s, opt } => {
                unexpected(&|key| key == UNCERTAINTY_S || key.starts_with(UNCERTAINTY_ADAM))?;
                let values = sized(UNCERTAINTY_S, k)?;
                let adam: HashMap<String, Tensor> = state
                    .iter()
                    .filter_map(|(key, t)| key.strip_prefix(UNCERTAINTY_ADAM).map(|r| (r.to_string(), t.clone())))
                    .collect();
                // Strict, and leaves the moments unchanged on error.
                opt.load_state_tensors(&adam, origin)?;
                let f32s: Vec<f32> = values.iter().map(|v| *v as f32).collect();
                s.set(&Tensor::from_slice(&f32s, k, s.device())?)?;
                Ok(())
            }
            State::GradNorm(g) => {
                const KEYS: [&str; 5] = [
                    GRADNORM_WEIGHTS,
                    GRADNORM_M,
                    GRADNORM_V,
                    GRADNORM_STEP,
                    GRADNORM_INITIAL,
                ];
                unexpected(&|key| KEYS.contains(&key))?;
                let weights = sized(GRADNORM_WEIGHTS, k)?;
                let m = sized(GRADNORM_M, k)?;
                let v = sized(GRADNORM_V, k)?;
                let step = sized(GRADNORM_STEP, 1)?[0];
                if !(step.fract() == 0.0 && (0.0..=f64::from(i32::MAX)).contains(&step)) {
                    return Err(bad(format!(
                        "balancer key `{GRADNORM_STEP}`: not a step count ({step})"
                    )));
                }
                // Absent when the checkpoint was written before the first GradNorm update.
                let initial = if state.contains_key(GRADNORM_INITIAL) {
                    Some(sized(GRADNORM_INITIAL, k)?)
                } else {
                    None
                };
                g.weights = weights;
                g.m = m;
                g.v = v;
                g.t = step as i32;
                g.initial = initial;
                Ok(())
            }
        }
    }

    /// The current task weights (uncertainty: the effective `exp(-s_k) / 2`).
    pub fn weights(&self) -> Vec<f64> {
        match &self.state {
            State::Fixed | State::PcGrad => self.fixed.clone(),
            State::Uncertainty { s, .. } => s
                .as_tensor()
                .to_vec1::<f32>()
                .map(|v| v.iter().map(|s| 0.5 * (-(*s as f64)).exp()).collect())
                .unwrap_or_default(),
            State::Dwa { weights, .. } => weights.clone(),
            State::GradNorm(g) => g.weights.clone(),
        }
    }

    /// Starts an epoch: DWA weights from the history, PCGrad's order seeded
    /// by (seed, epoch), conflict counters reset.
    pub fn begin_epoch(&mut self, epoch: usize, history: &[EpochLog]) {
        self.batch_in_epoch = 0;
        self.acc.clear();
        self.rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
        if let State::Dwa { temperature, weights } = &mut self.state {
            let n = history.len();
            if n >= 2 {
                *weights = dwa_weights(&history[n - 1].train_loss, &history[n - 2].train_loss, *temperature);
            }
        }
    }

    /// The epoch's conflict records (one per task pair with samples).
    pub fn end_epoch(&self) -> Vec<PairConflict> {
        self.acc
            .iter()
            .filter(|a| a.4 > 0)
            .map(|&(i, j, sum, neg, n)| PairConflict {
                a: self.task_names[i].clone(),
                b: self.task_names[j].clone(),
                mean_cosine: sum / n as f64,
                negative_share: neg as f64 / n as f64,
                samples: n,
            })
            .collect()
    }

    fn record(&mut self, flat: &[Tensor]) -> Result<()> {
        for (i, j, c) in pairwise_cosine(flat)? {
            match self.acc.iter_mut().find(|a| a.0 == i && a.1 == j) {
                Some(a) => {
                    a.2 += c;
                    a.3 += usize::from(c < 0.0);
                    a.4 += 1;
                }
                None => self.acc.push((i, j, c, usize::from(c < 0.0), 1)),
            }
        }
        Ok(())
    }

    /// One backward pass per task.
    fn per_task(losses: &[Tensor]) -> Result<Vec<GradStore>> {
        losses.iter().map(|l| Ok(l.backward()?)).collect()
    }

    /// One optimisation step on a batch under the configured balancer;
    /// returns the per-task losses. Every `conflict_every` batches of an
    /// epoch the per-task gradient cosines on the shared parameters are
    /// recorded (extra backward passes that do not change the update).
    pub fn step(
        &mut self,
        model: &Model,
        opt: &mut Optimizer,
        batch: &mtrec_data::Batch,
        clip: Option<f64>,
    ) -> Result<Vec<f64>> {
        self.step_shard(model, opt, Some(batch), clip, &mut GradSync::local())
    }

    /// [`Balancer::step`] on this rank's part of a global batch (`None`: no
    /// row of it, which happens when a short last batch has fewer rows than
    /// there are ranks; the rank still takes part in every exchange). The
    /// losses returned and the update are those of the global batch,
    /// identical on every rank (see [`crate::sync`]).
    pub(crate) fn step_shard(
        &mut self,
        model: &Model,
        opt: &mut Optimizer,
        batch: Option<&mtrec_data::Batch>,
        clip: Option<f64>,
        sync: &mut GradSync,
    ) -> Result<Vec<f64>> {
        let k = self.task_names.len();
        let BatchLosses {
            tasks: mut losses,
            touched,
            mut penalty,
        } = match batch {
            Some(b) => task_losses(model, b)?,
            // Constant zero losses: backward passes that reach no variable
            // (uncertainty's own term still reaches `s`).
            None => BatchLosses {
                tasks: (0..k)
                    .map(|_| Tensor::zeros((), DType::F32, model.device()))
                    .collect::<candle_core::Result<Vec<_>>>()?,
                touched: Vec::new(),
                penalty: None,
            },
        };
        let mut local = crate::trainer::loss_values(&losses)?;
        let mut counts = match batch {
            Some(b) if sync.size() > 1 => crate::sync::mask_counts(b)?,
            _ => vec![0.0; k],
        };
        if sync.size() > 1 {
            // The penalty is a mean over the rank's rows: scaled like a task
            // over all rows, its gradients sum to the global batch's. Every
            // rank sends the entry (zero without rows or penalty) so that the
            // exchanged buffers have one length.
            counts.push(batch.map_or(0.0, |b| b.inputs.rows() as f64));
            local.push(match &penalty {
                Some(p) => p.to_scalar::<f32>()? as f64,
                None => 0.0,
            });
        }
        let (scales, mut values) = sync.global_losses(&counts, &local)?;
        values.truncate(k);
        if sync.size() > 1 {
            losses = losses
                .iter()
                .zip(&scales)
                .map(|(l, s)| Ok((l * *s)?))
                .collect::<Result<Vec<_>>>()?;
            if let (Some(p), Some(s)) = (&penalty, scales.get(k)) {
                penalty = Some((p * *s)?);
            }
        }
        let merged = sync.merge_rows(&model.params().tables(), &touched)?;
        let sample = self.conflict_every > 0 && self.batch_in_epoch % self.conflict_every == 0 && losses.len() >= 2;
        self.batch_in_epoch += 1;
        let needs_per_task = sample || matches!(self.state, State::GradNorm(_) | State::PcGrad);
        // What the exchange sums (nothing with one rank): the model's dense
        // variables and the balancer's own trainable ones (uncertainty's `s`).
        let mut dense = Vec::new();
        if sync.size() > 1 {
            dense = model.params().vars();
            if let State::Uncertainty { s, .. } = &self.state {
                dense.push((UNCERTAINTY_S.to_string(), s.clone()));
            }
        }
        let stores = if needs_per_task {
            let mut stores = Self::per_task(&losses)?;
            for store in &mut stores {
                sync.reduce(store, &dense, &touched, &merged)?;
            }
            Some(stores)
        } else {
            None
        };
        let local_touched = touched;
        let touched = merged.touched.as_slice();
        let mut shared = self.shared.clone();
        if let Some(stores) = &stores {
            // The copies of this batch's touched table rows are shared when
            // two tasks' losses reach them (only these rows, never a table).
            let rows: Vec<(String, Var)> = touched.iter().map(|t| (t.table.clone(), t.values.clone())).collect();
            shared.extend(shared_vars(&rows, stores));
        }
        let flat = match &stores {
            // No shared parameter (e.g. single-task models): nothing to compare or project.
            Some(s) if !shared.is_empty() && (sample || matches!(self.state, State::PcGrad)) => {
                Some(s.iter().map(|g| flatten(g, &shared)).collect::<Result<Vec<_>>>()?)
            }
            _ => None,
        };
        if sample {
            if let Some(f) = &flat {
                self.record(f)?;
            }
        }
        let vars = crate::trainer::step_vars(model, touched);
        let mut grads = match &mut self.state {
            State::Fixed => weighted_backward(&losses, &self.fixed, penalty.as_ref())?,
            State::Dwa { weights, .. } => weighted_backward(&losses, weights, penalty.as_ref())?,
            State::Uncertainty { s, .. } => {
                let stacked = Tensor::stack(&losses, 0)?;
                let objective = uncertainty_loss_over(&stacked, s.as_tensor(), sync.size())?;
                match &penalty {
                    Some(p) => (objective + p)?.backward()?,
                    None => objective.backward()?,
                }
            }
            State::GradNorm(g) => {
                let stores = stores.ok_or_else(|| TrainError::Invalid("internal: no per-task gradients".into()))?;
                let combined = combine(stores, &vars, &g.weights)?;
                if let Some((_, w)) = &self.layer {
                    let norms = combined
                        .1
                        .iter()
                        .map(|n| {
                            n.get(w.as_tensor())
                                .map_or(Ok(0.0), |t| Ok(scalar(&t.sqr()?.sum_all()?)?.sqrt()))
                        })
                        .collect::<Result<Vec<f64>>>()?;
                    g.update(&values, &norms);
                }
                combined.0
            }
            State::PcGrad => {
                let stores = stores.ok_or_else(|| TrainError::Invalid("internal: no per-task gradients".into()))?;
                let (mut store, _) = combine(stores, &vars, &self.fixed)?;
                match flat {
                    // Nothing shared: PCGrad is the plain weighted sum.
                    None => store,
                    Some(flat) => {
                        pcgrad_sum_into(&mut store, &flat, &shared, &self.fixed, &mut self.rng)?;
                        store
                    }
                }
            }
        };
        if matches!(self.state, State::GradNorm(_) | State::PcGrad) {
            // The penalty belongs to no task: its gradient joins the update
            // these balancers formed, neither reweighted nor projected.
            add_penalty_grads(
                &mut grads,
                penalty.as_ref(),
                &vars,
                sync,
                &dense,
                &local_touched,
                &merged,
            )?;
        }
        if !matches!(self.state, State::GradNorm(_) | State::PcGrad) {
            // (GradNorm's and PCGrad's come from per-task gradients that
            // were summed over the ranks already.)
            sync.reduce(&mut grads, &dense, &local_touched, &merged)?;
        }
        if let Some(max) = clip {
            clip_grad_norm(&mut grads, &vars, max)?;
        }
        opt.step(&grads, touched)?;
        if let State::Uncertainty { opt: s_opt, .. } = &mut self.state {
            s_opt.step(&grads)?;
        }
        sync.average_buffers(model)?;
        Ok(values)
    }
}

/// PCGrad's update of the shared parameters: the tasks' weighted flat
/// gradients (`flat`, one `[P]` each over `shared`) projected and summed,
/// written over `store`'s entries of `shared`.
fn pcgrad_sum_into(
    store: &mut GradStore,
    flat: &[Tensor],
    shared: &[(String, Var)],
    weights: &[f64],
    rng: &mut StdRng,
) -> Result<()> {
    let weighted = flat
        .iter()
        .zip(weights)
        .map(|(g, w)| Ok((g * *w)?))
        .collect::<Result<Vec<_>>>()?;
    let projected = pcgrad_project(&weighted, rng)?;
    let mut sum = projected[0].clone();
    for p in &projected[1..] {
        sum = (sum + p)?;
    }
    let mut offset = 0;
    for (_, v) in shared {
        let n = v.as_tensor().elem_count();
        store.insert(v.as_tensor(), sum.narrow(0, offset, n)?.reshape(v.as_tensor().shape())?);
        offset += n;
    }
    Ok(())
}

/// `sum_k w_k L_k` (+ the penalty terms), one backward pass.
pub(crate) fn weighted_backward(losses: &[Tensor], weights: &[f64], penalty: Option<&Tensor>) -> Result<GradStore> {
    let mut total: Option<Tensor> = None;
    for (l, w) in losses.iter().zip(weights) {
        let weighted = (l * *w)?;
        total = Some(match total {
            None => weighted,
            Some(t) => (t + weighted)?,
        });
    }
    let mut total = total.ok_or_else(|| TrainError::Config("the model has no task".into()))?;
    if let Some(p) = penalty {
        total = (total + p)?;
    }
    Ok(total.backward()?)
}

/// Adds the penalty terms' gradients (one backward pass of their own,
/// summed over the ranks) into `store`, for the balancers that form the
/// update from per-task gradients (GradNorm, PCGrad): the penalty belongs
/// to no task, so it is neither reweighted nor projected.
fn add_penalty_grads(
    store: &mut GradStore,
    penalty: Option<&Tensor>,
    vars: &[(String, Var)],
    sync: &mut GradSync,
    dense: &[(String, Var)],
    touched: &[TouchedRows],
    merged: &crate::sync::Merged,
) -> Result<()> {
    let Some(p) = penalty else {
        return Ok(());
    };
    let mut grads = p.backward()?;
    sync.reduce(&mut grads, dense, touched, merged)?;
    for (_, v) in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            let sum = match store.remove(v.as_tensor()) {
                Some(have) => (have + g)?,
                None => g,
            };
            store.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// Sums the per-task gradients with weights into one store (every variable
/// gets `sum_k w_k g_k` over the tasks that reach it); also hands back the
/// per-task stores.
fn combine(stores: Vec<GradStore>, vars: &[(String, Var)], weights: &[f64]) -> Result<(GradStore, Vec<GradStore>)> {
    let mut out = GradStore::default();
    for (_, v) in vars {
        let mut acc: Option<Tensor> = None;
        for (s, w) in stores.iter().zip(weights) {
            if let Some(g) = s.get(v.as_tensor()) {
                let g = (g * *w)?;
                acc = Some(match acc {
                    None => g,
                    Some(a) => (a + g)?,
                });
            }
        }
        if let Some(a) = acc {
            out.insert(v.as_tensor(), a);
        }
    }
    Ok((out, stores))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The penalty's gradient joins the weighted task losses' unweighted:
    /// `d/dv (2 * L1 + 0.5 * L2 + P)` with `L1 = 3v`, `L2 = v^2`, `P = 4v` at
    /// `v = 1.5` is `2*3 + 0.5*2*1.5 + 4 = 11.5`.
    #[test]
    fn penalties_join_the_objective_unweighted() {
        let v = Var::new(1.5f32, &Device::Cpu).unwrap();
        let t = v.as_tensor();
        let losses = [(t * 3.0).unwrap(), t.sqr().unwrap()];
        let p = (t * 4.0).unwrap();
        let g = weighted_backward(&losses, &[2.0, 0.5], Some(&p)).unwrap();
        let got = g.get(t).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - 11.5).abs() < 1e-6, "{got}");
        let g = weighted_backward(&losses, &[2.0, 0.5], None).unwrap();
        let got = g.get(t).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - 7.5).abs() < 1e-6, "{got}");
    }

    /// For the per-task balancers the penalty's gradient is added to what
    /// they formed, for every variable it reaches (and only those).
    #[test]
    fn penalty_gradients_are_added_to_a_formed_update() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.], &dev).unwrap();
        let b = Var::new(&[3f32], &dev).unwrap();
        let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut store = GradStore::default();
        store.insert(a.as_tensor(), Tensor::new(&[10f32, 20.], &dev).unwrap());
        store.insert(b.as_tensor(), Tensor::new(&[5f32], &dev).unwrap());
        // P = 0.5 * sum(a^2): dP/da = a, nothing for b.
        let p = (a.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let mut sync = GradSync::local();
        let merged = sync.merge_rows(&[], &[]).unwrap();
        add_penalty_grads(&mut store, Some(&p), &vars, &mut sync, &[], &[], &merged).unwrap();
        assert_eq!(store.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [11., 22.]);
        assert_eq!(store.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [5.]);
    }
}
