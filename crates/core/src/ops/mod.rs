//! Fused CPU ops for the dense parts of a model: candle custom ops whose
//! backward is written by hand and writes each gradient once.
//!
//! - [`linear_act`]: `act(x W + b)` for a layer or a bank of experts
//!   (matmuls on the `gemm` crate's kernels, AVX-512 where the CPU has it,
//!   bias and activation in one pass; softmax counts as an activation, so a
//!   gate is one op);
//! - [`mix`]: the gate-weighted sum of one or two banks of expert outputs;
//! - [`embed_concat`]: the input layer's embedding gather and concatenation
//!   with the dense features, whose backward adds straight into the table's
//!   gradient.
//!
//! Each has a plain counterpart built from candle's differentiable ops
//! ([`linear_act_plain`], [`mix_plain`]): the reference the tests compare the
//! fused ops with (values and gradients), and the path taken for anything but
//! f32 tensors on the CPU. [`with_fused`] picks the path for the current
//! thread (the default is fused unless the environment variable
//! `MTREC_OPS=plain` is set), so that a whole training run can be repeated on
//! the plain ops.

mod embed;
mod fresh;
mod gemm;
mod kernels;
mod linear;
mod mix;

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, D};

use crate::error::{Error, Result};

/// An activation: what a config's layers write (`activation = "relu"`,
/// `"sigmoid"`, `"tanh"`, `"linear"`) and what a fused op applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// No activation (`"linear"`).
    #[serde(rename = "linear")]
    Identity,
    #[default]
    Relu,
    Sigmoid,
    Tanh,
    /// Row-wise softmax over the output columns: a gate's, not a layer
    /// activation a config can choose.
    #[serde(skip)]
    Softmax,
}

impl Activation {
    /// The activation written with candle's differentiable ops.
    pub fn apply_plain(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Identity => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
            Activation::Tanh => x.tanh()?,
            // `softmax`, not `softmax_last_dim`: the latter has no backward.
            Activation::Softmax => candle_nn::ops::softmax(x, D::Minus1)?,
        })
    }
}

thread_local! {
    static FUSED: Cell<Option<bool>> = const { Cell::new(None) };
}

fn default_fused() -> bool {
    static DEFAULT: OnceLock<bool> = OnceLock::new();
    *DEFAULT.get_or_init(|| std::env::var("MTREC_OPS").map_or(true, |v| v != "plain"))
}

/// Whether models built from the core components run the fused ops on this
/// thread.
pub fn fused() -> bool {
    FUSED.with(|f| f.get()).unwrap_or_else(default_fused)
}

/// Runs `f` with the fused ops on (`true`) or off on this thread.
pub fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FUSED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FUSED.with(|c| c.replace(Some(on))));
    f()
}

fn fusable(ts: &[&Tensor]) -> bool {
    fused() && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `act(x W + b)`: a layer (`x [B, d]`, `W [d, o]`, `b [o]`) or a bank of
/// experts (`W [n, d, o]`, `b [n, 1, o]`, `x [B, d]` shared by all experts or
/// `x [n, B, d]`, output `[n, B, o]`).
pub fn linear_act(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let mut all = vec![x, w];
    all.extend(b);
    if !fusable(&all) {
        return linear_act_plain(x, w, b, act);
    }
    let op = linear::LinearAct { act };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    })
}

/// [`linear_act`] written with candle ops (matmul, broadcast add, activation).
pub fn linear_act_plain(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let y = match (x.rank(), w.dims()) {
        (2, &[n, _, _]) => {
            let (rows, d) = x.dims2()?;
            // All experts read the same rows: broadcast (no copy) over the bank.
            x.unsqueeze(0)?.broadcast_as((n, rows, d))?.matmul(w)?
        }
        _ => x.matmul(w)?,
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    act.apply_plain(&y)
}

/// Mixes banks `[n_j, B, d]` (taken as one bank of `sum n_j` experts, in
/// order) with gate weights `[B, sum n_j]`: `out[b] = sum_i w[b, i] bank[i, b]`.
pub fn mix(weights: &Tensor, banks: &[Tensor]) -> Result<Tensor> {
    let mut all = vec![weights];
    all.extend(banks);
    if !fusable(&all) || banks.is_empty() {
        return mix_plain(weights, banks);
    }
    let w = weights.contiguous()?;
    Ok(match banks {
        [a] => w.apply_op2(&a.contiguous()?, mix::Mix)?,
        [a, b] => w.apply_op3(&a.contiguous()?, &b.contiguous()?, mix::Mix)?,
        // A custom op takes at most three tensors: more banks are
        // concatenated first (e.g. PLE's shared gate over every bank).
        _ => w.apply_op2(&Tensor::cat(banks, 0)?, mix::Mix)?,
    })
}

/// Whether [`embed_concat`] runs fused for these tensors (else the caller
/// takes its plain path: `index_select` and `cat`).
pub fn embed_fusable(table: &Tensor, dense: Option<&Tensor>) -> bool {
    let mut all = vec![table];
    all.extend(dense);
    fusable(&all)
}

/// `[table[ids[b, 0]], ..., table[ids[b, F-1]], dense[b]]` per row `b`:
/// `ids` row-major `[B, fields]` rows of `table` (`[rows, dim]`), `dense`
/// `[B, N]`. An id outside the table is an error.
pub fn embed_concat(table: &Tensor, ids: Vec<u32>, fields: usize, dense: Option<&Tensor>) -> Result<Tensor> {
    if fields == 0 || !ids.len().is_multiple_of(fields) {
        return Err(Error::Input(format!(
            "{} ids do not make rows of {fields} fields",
            ids.len()
        )));
    }
    let op = embed::EmbedConcat {
        ids: std::sync::Arc::new(ids),
        fields,
    };
    let table = table.contiguous()?;
    Ok(match dense {
        Some(d) => table.apply_op2(&d.contiguous()?, op)?,
        None => table.apply_op1(op)?,
    })
}

/// [`mix`] written with candle ops (concatenation, broadcast multiply, sum).
pub fn mix_plain(weights: &Tensor, banks: &[Tensor]) -> Result<Tensor> {
    let bank = match banks {
        [] => return Err(Error::GraphWide("internal: a gate mixes no bank".into())),
        [one] => one.clone(),
        _ => Tensor::cat(banks, 0)?,
    };
    let w = weights.t()?.unsqueeze(2)?; // [n, B, 1]
    Ok(bank.broadcast_mul(&w)?.sum(0)?)
}

/// An error of fused op `op`.
pub fn op_error(op: &str, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("mtrec {op}: {msg}"))
}

/// The contiguous f32 data of a CPU storage (the wrappers make inputs contiguous).
pub fn cpu_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        return Err(op_error(op, "expects f32 data"));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => v.get(a..b).ok_or_else(|| op_error(op, "layout out of bounds")),
        None => Err(op_error(op, "expects contiguous inputs")),
    }
}

/// [`cpu_slice`] of a tensor's storage.
pub(crate) fn storage_slice<'a>(op: &str, s: &'a Storage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => cpu_slice(op, c, l),
        _ => Err(op_error(op, "runs on the CPU only")),
    }
}
