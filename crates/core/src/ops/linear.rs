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

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use rayon::prelude::*;

use super::gemm::{matmul, threads, Mat};
use super::kernels::{act_grad_row, bias_act_row, for_row_chunks, group_col_sums};
use super::{cpu_slice, op_error, storage_slice, Act};

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
    pub act: Act,
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
        let mut out = vec![0.0f32; n * rows * o];
        // Each task: one block of rows of one expert, matmul then bias and
        // activation while the block is still in cache.
        let block = |i: usize, r0: usize, dst: &mut [f32]| -> candle_core::Result<()> {
            let m = dst.len() / o.max(1);
            matmul(
                m,
                o,
                d,
                dst,
                o,
                false,
                Mat::rows(&dm.x_of(x, i)[r0 * d..], d),
                Mat::rows(&w[i * d * o..(i + 1) * d * o], o),
            )?;
            if b.is_some() || act != Act::Identity {
                let bias = b.map(|b| &b[i * o..(i + 1) * o]);
                for row in dst.chunks_exact_mut(o) {
                    bias_act_row(row, bias, act);
                }
            }
            Ok(())
        };
        for_expert_blocks(&mut out, n, rows, o, rows * d * o, block)?;
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
        let dz: &[f32] = if act == Act::Identity {
            dys
        } else {
            let mut buf = vec![0.0f32; ys.len()];
            for_row_chunks(&mut buf, o, |first, chunk| {
                let at = first * o;
                for (j, dz) in chunk.chunks_exact_mut(o).enumerate() {
                    let r = at + j * o;
                    act_grad_row(dz, &ys[r..r + o], &dys[r..r + o], act);
                }
            });
            owned = buf;
            &owned
        };
        let db = match b {
            Some(b) if b.track_op() => Some(Tensor::from_vec(group_col_sums(dz, o, rows), b.shape(), b.device())?),
            _ => None,
        };
        // dW_i = x_i^T dz_i: one task per expert, or blocks of W's rows.
        let dw = if w.track_op() {
            let mut g = vec![0.0f32; n * d * o];
            let t = threads();
            let work = n * rows * d * o;
            if t > 1 && n >= t && work >= PAR_WORK {
                g.par_chunks_mut(d * o).enumerate().try_for_each(|(i, gi)| {
                    matmul(
                        d,
                        o,
                        rows,
                        gi,
                        o,
                        false,
                        Mat::transposed(dm.x_of(xs, i), d),
                        Mat::rows(&dz[i * rows * o..(i + 1) * rows * o], o),
                    )
                })?;
            } else {
                for i in 0..n {
                    let xi = dm.x_of(xs, i);
                    let dzi = &dz[i * rows * o..(i + 1) * rows * o];
                    // Rows p0.. of dW_i = columns p0.. of x_i, transposed.
                    let part = |p0: usize, gb: &mut [f32]| {
                        matmul(
                            gb.len() / o.max(1),
                            o,
                            rows,
                            gb,
                            o,
                            false,
                            Mat {
                                data: &xi[p0..],
                                rs: 1,
                                cs: d,
                            },
                            Mat::rows(dzi, o),
                        )
                    };
                    let gi = &mut g[i * d * o..(i + 1) * d * o];
                    if t > 1 && work >= PAR_WORK && d >= 2 * t {
                        let per = d.div_ceil(2 * t);
                        gi.par_chunks_mut(per * o)
                            .enumerate()
                            .try_for_each(|(j, gb)| part(j * per, gb))?;
                    } else {
                        part(0, gi)?;
                    }
                }
            }
            Some(Tensor::from_vec(g, w.shape(), w.device())?)
        } else {
            None
        };
        // dx = sum_i dz_i W_i^T (shared input) or dx_i = dz_i W_i^T, by row blocks.
        let dx = if x.track_op() {
            let wt = |i: usize| Mat::transposed(&ws[i * d * o..(i + 1) * d * o], o);
            let dz_rows = |i: usize, r0: usize| Mat::rows(&dz[(i * rows + r0) * o..], o);
            if dm.shared {
                let mut g = vec![0.0f32; rows * d];
                for_expert_blocks(&mut g, 1, rows, d, n * rows * d * o, |_, r0, dst| {
                    let m = dst.len() / d.max(1);
                    for i in 0..n {
                        matmul(m, d, o, dst, d, i > 0, dz_rows(i, r0), wt(i))?;
                    }
                    Ok(())
                })?;
                Some(Tensor::from_vec(g, x.shape(), x.device())?)
            } else {
                let mut g = vec![0.0f32; n * rows * d];
                for_expert_blocks(&mut g, n, rows, d, rows * d * o, |i, r0, dst| {
                    matmul(dst.len() / d.max(1), d, o, dst, d, false, dz_rows(i, r0), wt(i))
                })?;
                Some(Tensor::from_vec(g, x.shape(), x.device())?)
            }
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// Below this many multiply-adds an op runs on the calling thread.
const PAR_WORK: usize = 1 << 18;

/// Runs `f(expert, first_row, rows_block)` over `out` (`n` experts x `rows`
/// rows of `width`), split into blocks of rows that never straddle two
/// experts: about two blocks per thread in all, each run on one thread (the
/// matmuls inside are single-threaded, so every thread works on its own
/// block with no synchronisation inside). `work_per_expert` (multiply-adds)
/// decides whether splitting pays at all.
fn for_expert_blocks(
    out: &mut [f32],
    n: usize,
    rows: usize,
    width: usize,
    work_per_expert: usize,
    f: impl Fn(usize, usize, &mut [f32]) -> candle_core::Result<()> + Sync + Send,
) -> candle_core::Result<()> {
    let per_expert = rows * width;
    if per_expert == 0 {
        return Ok(());
    }
    let t = threads();
    if t <= 1 || n * work_per_expert < PAR_WORK {
        for (i, oi) in out.chunks_mut(per_expert).enumerate() {
            f(i, 0, oi)?;
        }
        return Ok(());
    }
    let blocks = (2 * t).div_ceil(n).max(1);
    let per = rows.div_ceil(blocks).max(1);
    out.par_chunks_mut(per_expert).enumerate().try_for_each(|(i, oi)| {
        if blocks == 1 {
            f(i, 0, oi)
        } else {
            oi.par_chunks_mut(per * width)
                .enumerate()
                .try_for_each(|(j, ob)| f(i, j * per, ob))
        }
    })
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
