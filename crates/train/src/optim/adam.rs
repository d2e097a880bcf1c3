//! Adam / AdamW with checkpointable state and a one-pass in-place CPU path.
//!
//! The update is PyTorch's `torch.optim.Adam` (`decoupled = false`, L2 decay
//! added to the gradient) and `torch.optim.AdamW` (`decoupled = true`), with the
//! same bias correction and the same order of operations per element:
//!
//! ```text
//! t      += 1                                  (per variable, as PyTorch's state["step"])
//! g      += wd * p                             (only if !decoupled)
//! p      *= 1 - lr * wd                        (only if decoupled)
//! m       = m + (1 - beta1) * (g - m)          (exp_avg.lerp_(g, 1 - beta1))
//! v       = v * beta2 + (1 - beta2) * g * g
//! denom   = sqrt(v) / sqrt(1 - beta2^t) + eps
//! p      += -(lr / (1 - beta1^t)) * m / denom
//! ```
//!
//! For f32 variables on the CPU the whole update runs in one pass over the
//! parameter storage, in place (a candle [`InplaceOp2`]), with the moments in
//! plain `Vec<f32>` buffers: no tensor is allocated. Other dtypes and devices
//! use the same formula written with tensor ops.
//!
//! Like PyTorch, every variable has its own step count: a variable without a
//! gradient in a step is skipped entirely (its moments and its step count stay
//! as they are), so its bias correction starts from 1 when it first gets one.
//!
//! # Checkpoint format (safetensors)
//! - `"{var}.m"`, `"{var}.v"`: first and second moments, the variable's shape
//!   and dtype;
//! - `"{var}.step"`: the variable's step count, an `i64` scalar;
//! - `"step"`: the number of [`Adam::step`] calls, an `i64` scalar.
//!
//! Hyper-parameters (including the learning rate) are not part of the state:
//! they come from the configuration the optimizer is built with.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Key of the global step counter in the state tensors.
pub const STEP_KEY: &str = "step";

/// Hyper-parameters of [`Adam`]. Defaults are PyTorch's (`lr` 1e-3, betas
/// (0.9, 0.999), eps 1e-8, no weight decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `true`: AdamW-style decoupled decay, `p *= 1 - lr * weight_decay`.
    /// `false`: L2 decay added to the gradient, `g += weight_decay * p`, as
    /// `torch.optim.Adam(weight_decay=..)`.
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
        }
    }
}

impl AdamConfig {
    /// Checks the ranges PyTorch checks: `lr >= 0`, `eps >= 0`,
    /// `0 <= beta < 1`, `weight_decay >= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, value: f64, range: &str| {
            Err(TrainError::Invalid(format!(
                "Adam {what} = {value} is out of range ({range})"
            )))
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", self.lr, "finite, >= 0");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "[0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "[0, 1)");
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad("eps", self.eps, "finite, >= 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "finite, >= 0");
        }
        Ok(())
    }
}

/// Adam(W) over a fixed list of named variables.
pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

struct Slot {
    name: String,
    var: Var,
    /// Number of updates this variable received (PyTorch's `state["step"]`).
    step: u64,
    moments: Moments,
}

enum Moments {
    /// f32 variable on the CPU: updated in place in one pass.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Any other variable: tensor ops, moments in the variable's dtype/device.
    Tensor { m: Tensor, v: Tensor },
}

impl fmt::Debug for Adam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adam")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("vars", &self.slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl Adam {
    /// An optimizer over `vars` (name, variable). The names are the
    /// checkpoint keys: they must be unique; keep them stable (e.g. the
    /// `VarMap` paths, sorted). Moments start at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        Self::build(vars, config, true)
    }

    /// `allow_fast = false` forces the tensor-op path (used to test the fast
    /// path against it).
    fn build(vars: Vec<(String, Var)>, config: AdamConfig, allow_fast: bool) -> Result<Self> {
        config.validate()?;
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !seen.insert(name.clone()) {
                return Err(TrainError::Invalid(format!(
                    "variable name `{name}` is given twice to the optimizer"
                )));
            }
            let moments = if allow_fast && is_host_f32(var.as_tensor()) {
                let n = var.elem_count();
                Moments::Host {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            } else {
                let zeros = var.as_detached_tensor().zeros_like()?;
                Moments::Tensor {
                    m: zeros.clone(),
                    v: zeros.zeros_like()?,
                }
            };
            slots.push(Slot {
                name,
                var,
                step: 0,
                moments,
            });
        }
        Ok(Adam { config, slots, step: 0 })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate used by the following steps (schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Number of [`Adam::step`] calls so far (restored by [`Adam::load`]).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the variables, in the order given to [`Adam::new`].
    pub fn var_names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// One update of every variable that has a gradient in `grads`;
    /// variables without one are left alone (moments and step count too).
    ///
    /// All gradients are checked (shape) before anything is modified.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let mut work = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if grad.dims() != slot.var.dims() {
                return Err(TrainError::Invalid(format!(
                    "gradient of `{}` has shape {:?}, the variable has shape {:?}",
                    slot.name,
                    grad.dims(),
                    slot.var.dims()
                )));
            }
            work.push((i, grad.detach()));
        }
        self.step += 1;
        for (i, grad) in work {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.step += 1;
                let coeffs = Coeffs::new(&self.config, slot.step);
                slot.update(&grad, &coeffs)?;
            }
        }
        Ok(())
    }

    /// The optimizer state as named tensors (see the module docs for the
    /// keys), e.g. to store it next to the model weights.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(3 * self.slots.len() + 1);
        for slot in &self.slots {
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => {
                    let shape = slot.var.shape();
                    (
                        Tensor::from_slice(m, shape, &Device::Cpu)?,
                        Tensor::from_slice(v, shape, &Device::Cpu)?,
                    )
                }
                Moments::Tensor { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("{}.m", slot.name), m);
            out.insert(format!("{}.v", slot.name), v);
            out.insert(format!("{}.step", slot.name), step_tensor(slot.step)?);
        }
        out.insert(STEP_KEY.to_string(), step_tensor(self.step)?);
        Ok(out)
    }

    /// Writes the state to `path` as safetensors, atomically: the data goes
    /// to `path.tmp` in the same directory, is synced, then renamed over
    /// `path`. A crash leaves either the old file or the new one.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let state = self.state_tensors()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = candle_core::safetensors::save(&state, &tmp)
            .map_err(|e| TrainError::io(&tmp, std::io::Error::other(e.to_string())))
            .and_then(|()| {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| TrainError::io(&tmp, e))
            })
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e)));
        if let Err(e) = written {
            // Best effort: do not leave a half-written temporary behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // Make the rename itself durable (best effort: not every platform
        // or file system lets a directory be opened and synced).
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Restores the state written by [`Adam::save`]. Strict: every
    /// variable's `.m`, `.v` and `.step` must be present with the variable's
    /// shape, the global `step` too, and nothing else; otherwise
    /// [`TrainError::Checkpoint`] naming the key, and the optimizer is left
    /// unchanged.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let state = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| TrainError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        self.load_state_tensors(&state, path)
    }

    /// [`Adam::load`] from tensors in memory (e.g. read from a combined
    /// checkpoint); `origin` names their source in error messages.
    pub fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
        let bad = |message: String| TrainError::checkpoint(origin, message);
        let get = |key: &str, name: &str| {
            state
                .get(key)
                .ok_or_else(|| bad(format!("missing key `{key}` for variable `{name}`")))
        };

        let global = match state.get(STEP_KEY) {
            Some(t) => read_step(t).map_err(|m| bad(format!("key `{STEP_KEY}`: {m}")))?,
            None => return Err(bad(format!("missing key `{STEP_KEY}` (global step)"))),
        };

        let mut expected: HashSet<&str> = HashSet::with_capacity(state.len());
        expected.insert(STEP_KEY);
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let name = slot.name.as_str();
            let m_key = format!("{name}.m");
            let v_key = format!("{name}.v");
            let s_key = format!("{name}.step");
            let m = get(&m_key, name)?;
            let v = get(&v_key, name)?;
            let s = get(&s_key, name)?;
            for (key, t) in [(&m_key, m), (&v_key, v)] {
                if t.dims() != slot.var.dims() {
                    return Err(bad(format!(
                        "key `{key}` has shape {:?}, variable `{name}` has shape {:?}",
                        t.dims(),
                        slot.var.dims()
                    )));
                }
                check_values(t, key == &v_key).map_err(|m| bad(format!("key `{key}`: {m}")))?;
            }
            let step = read_step(s).map_err(|m| bad(format!("key `{s_key}`: {m}")))?;
            if step > global {
                return Err(bad(format!(
                    "key `{s_key}` = {step} is larger than the global step {global}"
                )));
            }
            let moments = match &slot.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                },
                Moments::Tensor { .. } => {
                    let (dtype, device) = (slot.var.dtype(), slot.var.device());
                    Moments::Tensor {
                        m: m.to_dtype(dtype)?.to_device(device)?,
                        v: v.to_dtype(dtype)?.to_device(device)?,
                    }
                }
            };
            restored.push((step, moments));
            expected.extend(state.get_key_value(&m_key).map(|(k, _)| k.as_str()));
            expected.extend(state.get_key_value(&v_key).map(|(k, _)| k.as_str()));
            expected.extend(state.get_key_value(&s_key).map(|(k, _)| k.as_str()));
        }
        let mut extra: Vec<&str> = state
            .keys()
            .map(String::as_str)
            .filter(|k| !expected.contains(k))
            .collect();
        if !extra.is_empty() {
            extra.sort_unstable();
            return Err(bad(format!(
                "unexpected key(s) {}: no such variable in the optimizer",
                extra.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )));
        }

        for (slot, (step, moments)) in self.slots.iter_mut().zip(restored) {
            slot.step = step;
            slot.moments = moments;
        }
        self.step = global;
        Ok(())
    }
}

fn is_host_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu()
}

pub(super) fn step_tensor(step: u64) -> Result<Tensor> {
    let step =
        i64::try_from(step).map_err(|_| TrainError::Invalid(format!("step count {step} does not fit in i64")))?;
    Ok(Tensor::new(step, &Device::Cpu)?)
}

/// A non-negative integer scalar.
pub(super) fn read_step(t: &Tensor) -> std::result::Result<u64, String> {
    if t.rank() != 0 {
        return Err(format!("expected a scalar, found shape {:?}", t.dims()));
    }
    let value = match t.dtype() {
        DType::I64 | DType::U32 | DType::U8 => t
            .to_dtype(DType::I64)
            .and_then(|t| t.to_scalar::<i64>())
            .map_err(|e| e.to_string())?,
        other => return Err(format!("expected an integer step count, found dtype {other:?}")),
    };
    u64::try_from(value).map_err(|_| format!("negative step count {value}"))
}

/// Moments must be finite, second moments non-negative.
fn check_values(t: &Tensor, second_moment: bool) -> std::result::Result<(), String> {
    let values = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| e.to_string())?;
    for (i, &x) in values.iter().enumerate() {
        if !x.is_finite() || (second_moment && x < 0.0) {
            return Err(format!("invalid value {x} at flat index {i}"));
        }
    }
    Ok(())
}

/// The scalars of one update, in f64 as PyTorch computes them in Python.
#[derive(Debug, Clone, Copy)]
pub(super) struct Coeffs {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Alpha of the L2 term added to the gradient (0 when decoupled).
    l2: f64,
    /// Factor applied to the parameter before the update (1 unless decoupled).
    decay: f64,
    /// `lr / (1 - beta1^t)`.
    step_size: f64,
    /// `sqrt(1 - beta2^t)`.
    bc2_sqrt: f64,
}

impl Coeffs {
    pub(super) fn new(c: &AdamConfig, t: u64) -> Self {
        let t = t as f64;
        let bc1 = 1.0 - c.beta1.powf(t);
        let bc2 = 1.0 - c.beta2.powf(t);
        let (l2, decay) = match (c.weight_decay == 0.0, c.decoupled) {
            (true, _) => (0.0, 1.0),
            (false, true) => (0.0, 1.0 - c.lr * c.weight_decay),
            (false, false) => (c.weight_decay, 1.0),
        };
        Coeffs {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            l2,
            decay,
            step_size: c.lr / bc1,
            bc2_sqrt: bc2.sqrt(),
        }
    }
}

impl Slot {
    fn update(&mut self, grad: &Tensor, c: &Coeffs) -> Result<()> {
        match &mut self.moments {
            Moments::Host { m, v } => {
                let p = self.var.as_tensor();
                if !p.is_contiguous() {
                    return Err(TrainError::Invalid(format!(
                        "variable `{}` is not contiguous",
                        self.name
                    )));
                }
                let grad = grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
                let grad = grad.contiguous()?;
                let op = AdamInplace {
                    moments: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
                    c: F32Coeffs::from(c),
                };
                p.inplace_op2(&grad, &op)?;
            }
            Moments::Tensor { m, v } => {
                let p = self.var.as_detached_tensor();
                let g = grad.to_dtype(p.dtype())?.to_device(p.device())?;
                let g = if c.l2 != 0.0 { (&g + p.affine(c.l2, 0.0)?)? } else { g };
                let p = if c.decay != 1.0 { p.affine(c.decay, 0.0)? } else { p };
                let m_new = (&*m + (&g - &*m)?.affine(1.0 - c.beta1, 0.0)?)?;
                let v_new = (v.affine(c.beta2, 0.0)? + (g.affine(1.0 - c.beta2, 0.0)? * &g)?)?;
                let denom = v_new.sqrt()?.affine(1.0 / c.bc2_sqrt, c.eps)?;
                let p_new = (&p + (m_new.affine(-c.step_size, 0.0)? / &denom)?)?;
                self.var.set(&p_new)?;
                *m = m_new;
                *v = v_new;
            }
        }
        Ok(())
    }
}

/// [`Coeffs`] rounded to f32 once per variable, as PyTorch casts its Python
/// scalars to the tensor dtype.
#[derive(Debug, Clone, Copy)]
pub(super) struct F32Coeffs {
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    l2: f32,
    decay: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
}

impl From<&Coeffs> for F32Coeffs {
    fn from(c: &Coeffs) -> Self {
        F32Coeffs {
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            l2: c.l2 as f32,
            decay: c.decay as f32,
            neg_step_size: -c.step_size as f32,
            bc2_sqrt: c.bc2_sqrt as f32,
        }
    }
}

/// The in-place update: the parameter is the destination, the gradient the
/// source; the moment buffers are borrowed for the duration of the call.
struct AdamInplace<'a> {
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    c: F32Coeffs,
}

impl InplaceOp2 for AdamInplace<'_> {
    fn name(&self) -> &'static str {
        "mtrec-adam"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let fail = |msg: &str| Err(candle_core::Error::Msg(format!("mtrec-adam: {msg}")));
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            return fail("parameter and gradient must be f32");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            return fail("parameter and gradient must be contiguous");
        };
        let Ok(mut moments) = self.moments.try_borrow_mut() else {
            return fail("moment buffers already in use");
        };
        let (m, v) = &mut *moments;
        let (Some(p), Some(g)) = (p.get_mut(p0..p1), g.get(g0..g1)) else {
            return fail("layout out of the storage's bounds");
        };
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            return fail("parameter, gradient and moments differ in length");
        }
        let c = &self.c;
        let kernel = match (c.l2 != 0.0, c.decay != 1.0) {
            (false, false) => adam_kernel::<false, false>,
            (false, true) => adam_kernel::<false, true>,
            (true, false) => adam_kernel::<true, false>,
            (true, true) => adam_kernel::<true, true>,
        };
        if p.len() < PARALLEL_MIN {
            kernel(p, g, m, v, c);
        } else {
            // Elementwise, so splitting the pass over the pool's threads
            // gives bit-identical results; on the benchmark's MMoE the
            // single-threaded pass was ~3% of a step with the other core idle.
            p.par_chunks_mut(PARALLEL_CHUNK)
                .zip(g.par_chunks(PARALLEL_CHUNK))
                .zip(m.par_chunks_mut(PARALLEL_CHUNK))
                .zip(v.par_chunks_mut(PARALLEL_CHUNK))
                .for_each(|(((p, g), m), v)| kernel(p, g, m, v, c));
        }
        Ok(())
    }
}

/// Variables with fewer elements than this are updated on the calling
/// thread: below it the hand-off to the pool costs more than it saves.
const PARALLEL_MIN: usize = 1 << 16;
/// Elements per parallel task (64 KiB of each buffer: a few tasks per
/// thread for the large expert weights, each streaming through cache).
const PARALLEL_CHUNK: usize = 1 << 14;

/// One pass over parameter, gradient and moments; branch-free inner loop
/// (the decay mode is a const parameter) written as zips so it vectorises.
#[inline(always)]
pub(super) fn adam_kernel<const L2: bool, const DECAY: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &F32Coeffs,
) {
    let F32Coeffs {
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        eps,
        l2,
        decay,
        neg_step_size,
        bc2_sqrt,
    } = *c;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut param = *p;
        let g = if L2 { g + l2 * param } else { g };
        if DECAY {
            param *= decay;
        }
        let m_new = *m + one_minus_beta1 * (g - *m);
        let v_new = *v * beta2 + one_minus_beta2 * g * g;
        *m = m_new;
        *v = v_new;
        let denom = v_new.sqrt() / bc2_sqrt + eps;
        *p = param + neg_step_size * m_new / denom;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn var(data: &[f32]) -> Var {
        Var::from_slice(data, data.len(), &Device::Cpu).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// A GradStore holding exactly the given gradients.
    fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
        let mut grads = GradStore::default();
        for (v, g) in pairs {
            let t = Tensor::from_slice(g, v.shape(), &Device::Cpu).unwrap();
            grads.insert(v.as_tensor(), t);
        }
        grads
    }

    fn random_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
    }

    /// Independent scalar reference (f64), straight from the PyTorch docs.
    fn reference_step(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], t: i32, c: &AdamConfig) {
        for i in 0..p.len() {
            let mut g_i = g[i];
            if c.weight_decay != 0.0 {
                if c.decoupled {
                    p[i] *= 1.0 - c.lr * c.weight_decay;
                } else {
                    g_i += c.weight_decay * p[i];
                }
            }
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g_i;
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g_i * g_i;
            let m_hat = m[i] / (1.0 - c.beta1.powi(t));
            let v_hat = v[i] / (1.0 - c.beta2.powi(t));
            p[i] -= c.lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }

    #[test]
    fn first_step_is_lr_times_sign() {
        let p0 = [1.0f32, -2.0, 0.5, 3.0];
        let g = [0.3f32, -0.01, 2.0, 0.0];
        let w = var(&p0);
        let cfg = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        let mut opt = Adam::new(vec![("w".into(), w.clone())], cfg).unwrap();
        opt.step(&grads_for(&[(&w, &g)])).unwrap();
        // Step 1 from m = v = 0: m_hat = g, v_hat = g^2, so the update is
        // lr * g / (|g| + eps): 1 - 0.01*0.3/0.30000001 = 0.99000000033,
        // -2 + 0.01*0.01/0.01000001 = -1.99000001, 0.5 - 0.01 = 0.49, and
        // a zero gradient leaves 3.0 where it is.
        let expect: Vec<f64> = p0
            .iter()
            .zip(&g)
            .map(|(&p, &g)| {
                let (p, g) = (p as f64, g as f64);
                p - 0.01 * g / (g.abs() + 1e-8)
            })
            .collect();
        for (got, want) in values(&w).iter().zip(&expect) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(values(&w)[3], 3.0);
        assert!((values(&w)[2] - 0.49).abs() < 1e-6);
        assert_eq!(opt.step_count(), 1);
    }

    #[test]
    fn weight_decay_both_modes_first_step() {
        let (p, g, lr, wd) = (2.0f32, 0.5f32, 0.1, 0.2);
        // Decoupled: p * (1 - lr*wd) - lr * g/|g| = 2 * 0.98 - 0.1 = 1.86.
        let w = var(&[p]);
        let cfg = AdamConfig {
            lr,
            weight_decay: wd,
            decoupled: true,
            ..Default::default()
        };
        let mut opt = Adam::new(vec![("w".into(), w.clone())], cfg).unwrap();
        opt.step(&grads_for(&[(&w, &[g])])).unwrap();
        assert!((values(&w)[0] - 1.86).abs() < 1e-6, "{:?}", values(&w));

        // L2: g' = g + wd * p = 0.5 + 0.4 = 0.9 > 0, so p - lr * 1 = 1.9.
        // With a negative gradient g = -0.3: g' = -0.3 + 0.4 = 0.1 > 0,
        // the decay flips the direction: p - lr = 1.9 again (not 2.1).
        for g in [0.5f32, -0.3] {
            let w = var(&[p]);
            let cfg = AdamConfig {
                decoupled: false,
                ..cfg
            };
            let mut opt = Adam::new(vec![("w".into(), w.clone())], cfg).unwrap();
            opt.step(&grads_for(&[(&w, &[g])])).unwrap();
            assert!((values(&w)[0] - 1.9).abs() < 1e-6, "{:?}", values(&w));
        }
    }

    fn run_fast_vs_reference(cfg: AdamConfig) {
        let mut rng = StdRng::seed_from_u64(7);
        let shape = (13, 7);
        let n = 13 * 7;
        let p0 = random_vec(&mut rng, n, 1.0);
        let fast = Var::from_slice(&p0, shape, &Device::Cpu).unwrap();
        let slow = Var::from_slice(&p0, shape, &Device::Cpu).unwrap();
        let mut opt_fast = Adam::new(vec![("w".into(), fast.clone())], cfg).unwrap();
        let mut opt_slow = Adam::build(vec![("w".into(), slow.clone())], cfg, false).unwrap();
        assert!(matches!(opt_fast.slots[0].moments, Moments::Host { .. }));
        assert!(matches!(opt_slow.slots[0].moments, Moments::Tensor { .. }));
        let mut p_ref: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
        let mut m_ref = vec![0.0; n];
        let mut v_ref = vec![0.0; n];
        for t in 1..=20 {
            let g = random_vec(&mut rng, n, 0.5 + t as f32 / 10.0);
            let gt = Tensor::from_slice(&g, shape, &Device::Cpu).unwrap();
            let mut gf = GradStore::default();
            gf.insert(fast.as_tensor(), gt.clone());
            let mut gs = GradStore::default();
            gs.insert(slow.as_tensor(), gt);
            opt_fast.step(&gf).unwrap();
            opt_slow.step(&gs).unwrap();
            let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            reference_step(&mut p_ref, &g64, &mut m_ref, &mut v_ref, t, &cfg);
        }
        let (pf, ps) = (values(&fast), values(&slow));
        let mut worst_fs = 0f64;
        let mut worst_ref = 0f64;
        for i in 0..n {
            let scale = (ps[i].abs() as f64).max(1e-3);
            worst_fs = worst_fs.max((pf[i] - ps[i]).abs() as f64 / scale);
            worst_ref = worst_ref.max((pf[i] as f64 - p_ref[i]).abs() / scale);
        }
        assert!(worst_fs < 1e-5, "fast vs tensor path: rel err {worst_fs}");
        assert!(worst_ref < 1e-5, "fast vs f64 reference: rel err {worst_ref}");
        // The parameters really moved (20 steps of ~lr each).
        let moved = pf.iter().zip(&p0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 10.0 * cfg.lr as f32 * 0.5, "moved {moved}");
    }

    #[test]
    fn parallel_pass_is_bit_identical_to_one_serial_pass() {
        // Large enough to take the parallel path, not a multiple of the chunk.
        let n = PARALLEL_MIN + 3 * PARALLEL_CHUNK / 2 + 7;
        let mut rng = StdRng::seed_from_u64(11);
        let p0 = random_vec(&mut rng, n, 1.0);
        let cfg = AdamConfig {
            lr: 0.01,
            weight_decay: 0.05,
            decoupled: false,
            ..Default::default()
        };
        let var = Var::from_slice(&p0, n, &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
        for t in 1..=3u64 {
            let g = random_vec(&mut rng, n, 0.7);
            let mut grads = GradStore::default();
            grads.insert(var.as_tensor(), Tensor::from_slice(&g, n, &Device::Cpu).unwrap());
            opt.step(&grads).unwrap();
            let c = F32Coeffs::from(&Coeffs::new(&cfg, t));
            adam_kernel::<true, false>(&mut p, &g, &mut m, &mut v, &c);
        }
        assert_eq!(values(&var), p);
        let Moments::Host { m: got_m, v: got_v } = &opt.slots[0].moments else {
            panic!("expected the host path");
        };
        assert_eq!(got_m, &m);
        assert_eq!(got_v, &v);
    }

    #[test]
    fn fast_path_matches_tensor_path_and_reference() {
        let base = AdamConfig {
            lr: 0.01,
            ..Default::default()
        };
        run_fast_vs_reference(base);
        run_fast_vs_reference(AdamConfig {
            weight_decay: 0.1,
            decoupled: true,
            ..base
        });
        run_fast_vs_reference(AdamConfig {
            weight_decay: 0.1,
            decoupled: false,
            ..base
        });
    }

    #[test]
    fn f64_variables_use_tensor_path() {
        let w = Var::from_slice(&[1.0f64, -1.0], 2, &Device::Cpu).unwrap();
        let mut opt = Adam::new(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(opt.slots[0].moments, Moments::Tensor { .. }));
        let mut grads = GradStore::default();
        grads.insert(
            w.as_tensor(),
            Tensor::from_slice(&[2.0f64, -4.0], 2, &Device::Cpu).unwrap(),
        );
        opt.step(&grads).unwrap();
        let got = w.as_tensor().to_vec1::<f64>().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-9 && (got[1] + 0.9).abs() < 1e-9);
    }

    #[test]
    fn non_contiguous_gradient() {
        let p0: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let w = Var::from_slice(&p0, (2, 3), &Device::Cpu).unwrap();
        let g_t = Tensor::from_slice(&[1.0f32, -2.0, 3.0, -4.0, 5.0, -6.0], (3, 2), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        assert!(!g_t.is_contiguous());
        let expected_g = g_t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut grads = GradStore::default();
        grads.insert(w.as_tensor(), g_t);
        let mut opt = Adam::new(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        opt.step(&grads).unwrap();
        for ((got, p), g) in values(&w).iter().zip(&p0).zip(&expected_g) {
            assert!((got - (p - 0.5 * g.signum())).abs() < 1e-6);
        }
    }

    #[test]
    fn variables_without_gradient_are_skipped() {
        let a = var(&[1.0, 2.0]);
        let b = var(&[3.0]);
        let mut opt = Adam::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            AdamConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..3 {
            opt.step(&grads_for(&[(&a, &[1.0, -1.0])])).unwrap();
        }
        assert_eq!(values(&b), vec![3.0], "no gradient, not even decay");
        let state = opt.state_tensors().unwrap();
        assert_eq!(state["b.m"].to_vec1::<f32>().unwrap(), vec![0.0]);
        assert_eq!(state["b.v"].to_vec1::<f32>().unwrap(), vec![0.0]);
        assert_eq!(state["b.step"].to_scalar::<i64>().unwrap(), 0);
        assert_eq!(state["a.step"].to_scalar::<i64>().unwrap(), 3);
        assert_eq!(state["step"].to_scalar::<i64>().unwrap(), 3);
        // b's first update is bias-corrected from its own step 1, as in
        // PyTorch: exactly lr * sign(g) (plus decay), not a step-4 update.
        opt.step(&grads_for(&[(&b, &[2.0])])).unwrap();
        let want = 3.0 * (1.0 - 0.1 * 0.5) - 0.1;
        assert!((values(&b)[0] - want).abs() < 1e-6, "{:?}", values(&b));
    }

    #[test]
    fn gradient_shape_mismatch_is_an_error_and_changes_nothing() {
        let a = var(&[1.0, 2.0]);
        let b = var(&[1.0, 2.0, 3.0]);
        let mut opt = Adam::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            AdamConfig::default(),
        )
        .unwrap();
        let mut grads = grads_for(&[(&a, &[1.0, 1.0])]);
        grads.insert(b.as_tensor(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
        let err = opt.step(&grads).unwrap_err().to_string();
        assert!(err.contains("`b`"), "{err}");
        assert_eq!(values(&a), vec![1.0, 2.0]);
        assert_eq!(opt.step_count(), 0);
    }

    #[test]
    fn duplicate_names_and_bad_config_rejected() {
        let a = var(&[1.0]);
        let err = Adam::new(
            vec![("a".into(), a.clone()), ("a".into(), var(&[2.0]))],
            AdamConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`a`"), "{err}");
        for bad in [
            AdamConfig {
                lr: -1.0,
                ..Default::default()
            },
            AdamConfig {
                beta2: 1.0,
                ..Default::default()
            },
            AdamConfig {
                eps: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(Adam::new(vec![("a".into(), a.clone())], bad).is_err());
        }
    }

    #[test]
    fn config_defaults_and_toml() {
        let cfg: AdamConfig = toml::from_str("lr = 0.01\ndecoupled = false").unwrap();
        assert_eq!(
            cfg,
            AdamConfig {
                lr: 0.01,
                decoupled: false,
                ..Default::default()
            }
        );
        let d = AdamConfig::default();
        assert_eq!(
            (d.lr, d.beta1, d.beta2, d.eps, d.weight_decay, d.decoupled),
            (1e-3, 0.9, 0.999, 1e-8, 0.0, true)
        );
        assert!(toml::from_str::<AdamConfig>("learning_rate = 0.1").is_err());
    }

    #[test]
    fn minimizes_a_quadratic() {
        // f(w) = sum((w - c)^2), gradients from candle's backward.
        let c = Tensor::new(&[3.0f32, -1.0, 0.5, 10.0], &Device::Cpu).unwrap();
        let w = Var::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let mut opt = Adam::new(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let loss = |w: &Var| w.as_tensor().sub(&c).unwrap().sqr().unwrap().sum_all().unwrap();
        let start = loss(&w).to_scalar::<f32>().unwrap();
        for _ in 0..1000 {
            let grads = loss(&w).backward().unwrap();
            opt.step(&grads).unwrap();
        }
        let end = loss(&w).to_scalar::<f32>().unwrap();
        assert!(end < 1e-4 * start, "loss {start} -> {end}");
        let got = values(&w);
        for (g, want) in got.iter().zip([3.0, -1.0, 0.5, 10.0]) {
            assert!((g - want).abs() < 1e-2, "{got:?}");
        }
    }

    fn tmp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mtrec-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn two_vars(seed: u64) -> Vec<(String, Var)> {
        let mut rng = StdRng::seed_from_u64(seed);
        vec![
            (
                "layer.bias".into(),
                Var::from_slice(&random_vec(&mut rng, 5, 1.0), 5, &Device::Cpu).unwrap(),
            ),
            (
                "layer.weight".into(),
                Var::from_slice(&random_vec(&mut rng, 15, 1.0), (5, 3), &Device::Cpu).unwrap(),
            ),
        ]
    }

    fn random_grads(vars: &[(String, Var)], rng: &mut StdRng, step: usize) -> GradStore {
        let mut grads = GradStore::default();
        for (i, (_, v)) in vars.iter().enumerate() {
            // The bias has no gradient every third step: per-variable step
            // counts must survive the round trip too.
            if i == 0 && step % 3 == 2 {
                continue;
            }
            let g = random_vec(rng, v.elem_count(), 1.0);
            grads.insert(v.as_tensor(), Tensor::from_slice(&g, v.shape(), &Device::Cpu).unwrap());
        }
        grads
    }

    #[test]
    fn resume_continues_exactly() {
        let cfg = AdamConfig {
            lr: 0.05,
            weight_decay: 0.01,
            ..Default::default()
        };
        // Uninterrupted: 10 steps.
        let straight = two_vars(1);
        let mut rng = StdRng::seed_from_u64(99);
        let mut opt = Adam::new(straight.clone(), cfg).unwrap();
        for s in 0..10 {
            opt.step(&random_grads(&straight, &mut rng, s)).unwrap();
        }

        // Interrupted: 5 steps, save, a fresh optimizer, load, 5 steps.
        let resumed = two_vars(1);
        let mut rng = StdRng::seed_from_u64(99);
        let mut first = Adam::new(resumed.clone(), cfg).unwrap();
        for s in 0..5 {
            first.step(&random_grads(&resumed, &mut rng, s)).unwrap();
        }
        let path = tmp_path("resume.safetensors");
        first.save(&path).unwrap();
        assert!(!path.with_extension("safetensors.tmp").exists());
        drop(first);
        let mut second = Adam::new(resumed.clone(), cfg).unwrap();
        second.load(&path).unwrap();
        assert_eq!(second.step_count(), 5);
        for s in 5..10 {
            second.step(&random_grads(&resumed, &mut rng, s)).unwrap();
        }
        assert_eq!(second.step_count(), 10);
        for ((_, a), (_, b)) in straight.iter().zip(&resumed) {
            assert_eq!(values(a), values(b), "bit-identical after resume");
        }
        // A control: without loading the state the result differs.
        let control = two_vars(1);
        let mut rng = StdRng::seed_from_u64(99);
        let mut c1 = Adam::new(control.clone(), cfg).unwrap();
        for s in 0..5 {
            c1.step(&random_grads(&control, &mut rng, s)).unwrap();
        }
        let mut c2 = Adam::new(control.clone(), cfg).unwrap();
        for s in 5..10 {
            c2.step(&random_grads(&control, &mut rng, s)).unwrap();
        }
        assert_ne!(values(&straight[1].1), values(&control[1].1));
    }

    #[test]
    fn resume_tensor_path_too() {
        let cfg = AdamConfig {
            lr: 0.05,
            ..Default::default()
        };
        let a = two_vars(3);
        let b = two_vars(3);
        let mut rng = StdRng::seed_from_u64(5);
        let mut straight = Adam::build(a.clone(), cfg, false).unwrap();
        let mut rng2 = StdRng::seed_from_u64(5);
        let mut first = Adam::build(b.clone(), cfg, false).unwrap();
        for s in 0..4 {
            straight.step(&random_grads(&a, &mut rng, s)).unwrap();
            first.step(&random_grads(&b, &mut rng2, s)).unwrap();
        }
        let path = tmp_path("resume-tensor.safetensors");
        first.save(&path).unwrap();
        // Loaded into the fast path: the state format is the same.
        let mut second = Adam::new(b.clone(), cfg).unwrap();
        second.load(&path).unwrap();
        for s in 4..8 {
            straight.step(&random_grads(&a, &mut rng, s)).unwrap();
            second.step(&random_grads(&b, &mut rng2, s)).unwrap();
        }
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            for (p, q) in values(x).iter().zip(values(y)) {
                assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{p} vs {q}");
            }
        }
    }

    fn load_err(state: &HashMap<String, Tensor>) -> String {
        let mut opt = Adam::new(two_vars(1), AdamConfig::default()).unwrap();
        let path = tmp_path("bad.safetensors");
        candle_core::safetensors::save(state, &path).unwrap();
        let err = opt.load(&path).unwrap_err();
        assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
        assert_eq!(opt.step_count(), 0, "failed load leaves the optimizer as it was");
        err.to_string()
    }

    #[test]
    fn load_is_strict() {
        let vars = two_vars(1);
        let mut opt = Adam::new(vars.clone(), AdamConfig::default()).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        opt.step(&random_grads(&vars, &mut rng, 0)).unwrap();
        let good = opt.state_tensors().unwrap();

        let mut missing = good.clone();
        missing.remove("layer.weight.v");
        let err = load_err(&missing);
        assert!(err.contains("missing key `layer.weight.v`"), "{err}");

        let mut wrong_shape = good.clone();
        wrong_shape.insert(
            "layer.weight.m".into(),
            Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = load_err(&wrong_shape);
        assert!(
            err.contains("`layer.weight.m`") && err.contains("[3, 5]") && err.contains("[5, 3]"),
            "{err}"
        );

        let mut extra = good.clone();
        extra.insert("other.m".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
        let err = load_err(&extra);
        assert!(err.contains("unexpected key(s) `other.m`"), "{err}");

        let mut bad_step = good.clone();
        bad_step.insert("layer.bias.step".into(), Tensor::new(7i64, &Device::Cpu).unwrap());
        let err = load_err(&bad_step);
        assert!(err.contains("`layer.bias.step` = 7"), "{err}");

        let mut float_step = good.clone();
        float_step.insert("step".into(), Tensor::new(1f32, &Device::Cpu).unwrap());
        let err = load_err(&float_step);
        assert!(err.contains("key `step`"), "{err}");

        let mut negative_v = good.clone();
        negative_v.insert("layer.bias.v".into(), Tensor::full(-1f32, 5, &Device::Cpu).unwrap());
        let err = load_err(&negative_v);
        assert!(err.contains("`layer.bias.v`"), "{err}");

        let mut no_global = good.clone();
        no_global.remove("step");
        let err = load_err(&no_global);
        assert!(err.contains("missing key `step`"), "{err}");

        // And the untouched state loads.
        let path = tmp_path("good.safetensors");
        candle_core::safetensors::save(&good, &path).unwrap();
        let mut fresh = Adam::new(two_vars(1), AdamConfig::default()).unwrap();
        fresh.load(&path).unwrap();
        assert_eq!(fresh.step_count(), 1);
    }

    #[test]
    fn load_missing_file_is_io_error_with_path() {
        let mut opt = Adam::new(two_vars(1), AdamConfig::default()).unwrap();
        let path = tmp_path("does-not-exist.safetensors");
        let err = opt.load(&path).unwrap_err();
        assert!(matches!(err, TrainError::Io { .. }));
        assert!(err.to_string().contains("does-not-exist"), "{err}");
        std::fs::write(tmp_path("garbage.safetensors"), b"not safetensors").unwrap();
        let err = opt.load(tmp_path("garbage.safetensors")).unwrap_err();
        assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    }

    #[test]
    fn save_into_missing_directory_is_io_error_with_path() {
        let opt = Adam::new(two_vars(1), AdamConfig::default()).unwrap();
        let path = tmp_path("no-such-dir").join("opt.safetensors");
        let err = opt.save(&path).unwrap_err();
        assert!(matches!(err, TrainError::Io { .. }), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[test]
    fn lr_can_be_changed() {
        let w = var(&[1.0]);
        let mut opt = Adam::new(vec![("w".into(), w.clone())], AdamConfig::default()).unwrap();
        assert_eq!(opt.lr(), 1e-3);
        opt.set_lr(0.25);
        assert_eq!(opt.lr(), 0.25);
        opt.step(&grads_for(&[(&w, &[5.0])])).unwrap();
        assert!((values(&w)[0] - 0.75).abs() < 1e-6);
        assert_eq!(opt.var_names().collect::<Vec<_>>(), vec!["w"]);
    }
}
