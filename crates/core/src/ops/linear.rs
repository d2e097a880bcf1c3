//! `act(x W + b)`: a dense layer, or a bank of `n` of them, as one candle op
//! whose backward is written by hand.
//!
//! Shapes (the checkpoint layouts of `Linear` and `mlp-experts`):
//! - a layer: `x [B, d]`, `W [d, o]`, `b [o]` -> `[B, o]`;
//! - a bank: `W [n, d, o]`, `b [n, 1, o]`, `x [B, d]` (every expert reads the
//!   same rows: no broadcast copy) or `x [n, B, d]` -> `[n, B, o]`.
//!
//! Forward: one matmul per expert straight into the output, then one pass
//! adding the bias and applying the activation. Backward, from the output
//! `y` and its gradient `dy`: one pass `dz = act'(y) * dy` (bias gradient as
//! column sums of `dz`), `dW_i = x_i^T dz_i`, and `dx = sum_i dz_i W_i^T`
//! accumulated by the matmul itself. Each gradient is written once, where
//! candle's autograd would run matmul, broadcast-add and activation as three
//! graph nodes with a zero-filled gradient buffer each and a strided
//! reduction for the bias.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use rayon::prelude::*;

use super::fresh::{fresh_vec, Filled};
use super::gemm::{matmul, matmul_fresh, threads, Mat};
use super::kernels::{act_grad_fresh, bias_act_row, for_row_chunks, group_col_sums};
use super::{cpu_slice, op_error, storage_slice, Activation};

const OP: &str = "linear";

fn err(msg: String) -> candle_core::Error {
    op_error(OP, msg)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    cpu_slice(OP, s, l)
}

/// Sizes of one fused linear op.
#[derive(Clone, Copy, Debug)]
struct Dims {
    /// Experts (1 for a plain layer).
    n: usize,
    rows: usize,
    d: usize,
    o: usize,
    /// `x` is `[B, d]` and read by every expert.
    shared: bool,
    /// `W` is `[n, d, o]` (output `[n, B, o]`), not `[d, o]`.
    bank: bool,
}

impl Dims {
    fn new(x: &[usize], w: &[usize]) -> candle_core::Result<Self> {
        let (n, d, o, bank) = match *w {
            [d, o] => (1, d, o, false),
            [n, d, o] => (n, d, o, true),
            _ => return Err(err(format!("weight must be [d, o] or [n, d, o], got {w:?}"))),
        };
        let (rows, shared) = match *x {
            [rows, xd] if xd == d => (rows, true),
            [xn, rows, xd] if bank && xn == n && xd == d => (rows, false),
            _ => return Err(err(format!("input {x:?} does not fit weight {w:?}"))),
        };
        Ok(Self {
            n,
            rows,
            d,
            o,
            shared,
            bank,
        })
    }

    fn out_shape(&self) -> Shape {
        if self.bank {
            Shape::from((self.n, self.rows, self.o))
        } else {
            Shape::from((self.rows, self.o))
        }
    }

    /// Expert `i`'s input rows.
    fn x_of<'a>(&self, x: &'a [f32], i: usize) -> &'a [f32] {
        if self.shared {
            x
        } else {
            &x[i * self.rows * self.d..(i + 1) * self.rows * self.d]
        }
    }
}

/// The fused layer; `act` is applied row-wise for softmax.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinearAct {
    pub act: Activation,
}

impl LinearAct {
    fn forward(
        &self,
        x: &[f32],
        xl: &Layout,
        w: &[f32],
        wl: &Layout,
        b: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = Dims::new(xl.dims(), wl.dims())?;
        let Dims { n, rows, d, o, .. } = dm;
        if let Some(b) = b {
            if b.len() != n * o {
                return Err(err(format!("bias has {} values, expected {}", b.len(), n * o)));
            }
        }
        let act = self.act;
        // Each task: one block of rows of one expert, matmul then bias and
        // activation while the block is still in cache.
        let out = fresh_vec(n * rows * o, |buf| {
            for_expert_blocks(buf, n, rows, o, rows * d * o, |i, r0, dst| {
                let m = dst.len() / o.max(1);
                let (dst, filled) = matmul_fresh(
                    m,
                    o,
                    d,
                    dst,
                    Mat::rows(&dm.x_of(x, i)[r0 * d..], d),
                    Mat::rows(&w[i * d * o..(i + 1) * d * o], o),
                )?;
                if b.is_some() || act != Activation::Identity {
                    let bias = b.map(|b| &b[i * o..(i + 1) * o]);
                    for row in dst.chunks_exact_mut(o) {
                        bias_act_row(row, bias, act);
                    }
                }
                Ok(filled)
            })
        })?;
        Ok((CpuStorage::F32(out), dm.out_shape()))
    }

    /// Gradients of `x`, `W` and `b` (each only if that argument tracks one).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (xg, xl) = x.storage_and_layout();
        let (wg, wl) = w.storage_and_layout();
        let (yg, yl) = y.storage_and_layout();
        let (dyg, dyl) = dy.storage_and_layout();
        let (xs, ws, ys, dys) = (
            storage_slice(OP, &xg, xl)?,
            storage_slice(OP, &wg, wl)?,
            storage_slice(OP, &yg, yl)?,
            storage_slice(OP, &dyg, dyl)?,
        );
        let dm = Dims::new(xl.dims(), wl.dims())?;
        let Dims { n, rows, d, o, .. } = dm;
        if ys.len() != n * rows * o || dys.len() != ys.len() {
            return Err(err("output gradient does not fit the output".into()));
        }
        let act = self.act;
        // dz = act'(y) * dy (the identity needs no copy).
        let owned;
        let dz: &[f32] = if act == Activation::Identity {
            dys
        } else {
            owned = fresh_vec(ys.len(), |buf| {
                for_row_chunks(buf, o, |first, chunk| {
                    let (at, len) = (first * o, chunk.len());
                    act_grad_fresh(chunk, &ys[at..at + len], &dys[at..at + len], o, act).map(|(_, f)| f)
                })
                .into_iter()
                .collect()
            })?;
            &owned
        };
        let db = match b {
            Some(b) if b.track_op() => Some(Tensor::from_vec(group_col_sums(dz, o, rows), b.shape(), b.device())?),
            _ => None,
        };
        // dW_i = x_i^T dz_i: one task per expert, or blocks of W's rows.
        let dw = if w.track_op() {
            let t = threads();
            let work = n * rows * d * o;
            let g = fresh_vec(n * d * o, |buf| {
                if n * d * o == 0 {
                    return Ok(Vec::new());
                }
                if t > 1 && n >= t && work >= PAR_WORK {
                    return buf
                        .par_chunks_mut(d * o)
                        .enumerate()
                        .map(|(i, gi)| {
                            let dzi = &dz[i * rows * o..(i + 1) * rows * o];
                            matmul_fresh(d, o, rows, gi, Mat::transposed(dm.x_of(xs, i), d), Mat::rows(dzi, o))
                                .map(|(_, f)| f)
                        })
                        .collect();
                }
                let mut tokens = Vec::new();
                for (i, gi) in buf.chunks_mut(d * o).enumerate() {
                    let xi = dm.x_of(xs, i);
                    let dzi = &dz[i * rows * o..(i + 1) * rows * o];
                    // Rows p0.. of dW_i = columns p0.. of x_i, transposed.
                    let part = |p0: usize, gb| dw_rows(gb, &xi[p0..], d, dzi, o, rows);
                    if t > 1 && work >= PAR_WORK && d >= 2 * t {
                        let per = d.div_ceil(2 * t);
                        let parts: Vec<Filled<'_>> = gi
                            .par_chunks_mut(per * o)
                            .enumerate()
                            .map(|(j, gb)| part(j * per, gb))
                            .collect::<candle_core::Result<_>>()?;
                        tokens.extend(parts);
                    } else {
                        tokens.push(part(0, gi)?);
                    }
                }
                Ok(tokens)
            })?;
            Some(Tensor::from_vec(g, w.shape(), w.device())?)
        } else {
            None
        };
        // dx = sum_i dz_i W_i^T (shared input) or dx_i = dz_i W_i^T, by row blocks.
        let dx = if x.track_op() {
            let wt = |i: usize| Mat::transposed(&ws[i * d * o..(i + 1) * d * o], o);
            let dz_rows = |i: usize, r0: usize| Mat::rows(&dz[(i * rows + r0) * o..], o);
            if n == 0 {
                Some(x.zeros_like()?)
            } else if dm.shared {
                let g = fresh_vec(rows * d, |buf| {
                    for_expert_blocks(buf, 1, rows, d, n * rows * d * o, |_, r0, dst| {
                        let m = dst.len() / d.max(1);
                        let (dst, filled) = matmul_fresh(m, d, o, dst, dz_rows(0, r0), wt(0))?;
                        for i in 1..n {
                            matmul(m, d, o, dst, d, true, dz_rows(i, r0), wt(i))?;
                        }
                        Ok(filled)
                    })
                })?;
                Some(Tensor::from_vec(g, x.shape(), x.device())?)
            } else {
                let g = fresh_vec(n * rows * d, |buf| {
                    for_expert_blocks(buf, n, rows, d, rows * d * o, |i, r0, dst| {
                        matmul_fresh(dst.len() / d.max(1), d, o, dst, dz_rows(i, r0), wt(i)).map(|(_, f)| f)
                    })
                })?;
                Some(Tensor::from_vec(g, x.shape(), x.device())?)
            }
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// Rows `p0..` of `dW = x^T dz` into the fresh block `gb` (whole rows of
/// width `o`), from `x_cols = x[.., p0..]` (row stride `d`) and `dz [rows, o]`.
fn dw_rows<'g>(
    gb: &'g mut [MaybeUninit<f32>],
    x_cols: &[f32],
    d: usize,
    dz: &[f32],
    o: usize,
    rows: usize,
) -> candle_core::Result<Filled<'g>> {
    let x_t = Mat {
        data: x_cols,
        rs: 1,
        cs: d,
    };
    matmul_fresh(gb.len() / o.max(1), o, rows, gb, x_t, Mat::rows(dz, o)).map(|(_, f)| f)
}

/// Below this many multiply-adds an op runs on the calling thread.
const PAR_WORK: usize = 1 << 18;

/// Runs `f(expert, first_row, rows_block)` over `out` (`n` experts x `rows`
/// rows of `width`), split into blocks of rows that never straddle two
/// experts: about two blocks per thread in all, each run on one thread (the
/// matmuls inside are single-threaded, so every thread works on its own
/// block with no synchronisation inside). `work_per_expert` (multiply-adds)
/// decides whether splitting pays at all. Returns what each block returned.
fn for_expert_blocks<'a, T: Send, R: Send>(
    out: &'a mut [T],
    n: usize,
    rows: usize,
    width: usize,
    work_per_expert: usize,
    f: impl Fn(usize, usize, &'a mut [T]) -> candle_core::Result<R> + Sync + Send,
) -> candle_core::Result<Vec<R>> {
    let per_expert = rows * width;
    if per_expert == 0 {
        return Ok(Vec::new());
    }
    let t = threads();
    if t <= 1 || n * work_per_expert < PAR_WORK {
        return out
            .chunks_mut(per_expert)
            .enumerate()
            .map(|(i, oi)| f(i, 0, oi))
            .collect();
    }
    let blocks = (2 * t).div_ceil(n).max(1);
    let per = rows.div_ceil(blocks).max(1);
    let nested: Vec<Vec<R>> = out
        .par_chunks_mut(per_expert)
        .enumerate()
        .map(|(i, oi)| {
            if blocks == 1 {
                f(i, 0, oi).map(|r| vec![r])
            } else {
                oi.par_chunks_mut(per * width)
                    .enumerate()
                    .map(|(j, ob)| f(i, j * per, ob))
                    .collect()
            }
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(nested.into_iter().flatten().collect())
}

impl CustomOp2 for LinearAct {
    fn name(&self) -> &'static str {
        "mtrec-linear-act"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(slice(s1, l1)?, l1, slice(s2, l2)?, l2, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearAct {
    fn name(&self) -> &'static str {
        "mtrec-linear-bias-act"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(slice(s1, l1)?, l1, slice(s2, l2)?, l2, Some(slice(s3, l3)?))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), res, grad)
    }
}
