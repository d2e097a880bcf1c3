//! Partitioned normalization of one domain's rows in training as one candle
//! custom op with a hand-written backward.
//!
//! Written from candle's ops, the training forward of one domain is eight
//! graph nodes over `[n, width]` (mean, subtract, square, mean, subtract,
//! divide, multiply, add), and the backward of every broadcast among them
//! reduces over the rows with a strided sum: on the benchmark's STAR most of
//! a step went there, not into the matmuls (docs/performance.md). Here the
//! forward is two passes (column statistics, then the affine map) and the
//! backward two (column sums, then `dx`), with the textbook batch-norm
//! gradient, the statistics' dependence on `x` included:
//!
//! ```text
//! xhat = (x - mu) * r,   r = 1 / sqrt(var + eps)     (mu, var: biased, per column)
//! y    = xhat * g + b
//! db   = sum_rows dy,    dg = sum_rows dy * xhat
//! dx   = g * r / n * (n * dy - db - xhat * dg)
//! ```
//!
//! `g` and `b` are the already combined `gamma * gamma_p` and `beta + beta_p`
//! (`[width]`), so autograd carries their gradients on to the four
//! parameters. The plain path (`MTREC_OPS=plain`) keeps candle's ops; the
//! tests compare the two.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use mtrec_core::ops::{cpu_slice, op_error};

const OP: &str = "partitioned-norm";

fn op_err(msg: impl std::fmt::Display) -> candle_core::Error {
    op_error(OP, msg)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    cpu_slice(OP, s, l)
}

/// Per column of row-major `x` `[n, w]`: mean and biased variance, summed in
/// f64 (two passes, as the plain path's mean of squared deviations).
fn column_stats(x: &[f32], w: usize) -> (Vec<f32>, Vec<f32>) {
    let n = x.len() / w.max(1);
    let mut sum = vec![0f64; w];
    for row in x.chunks_exact(w) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1) as f64).collect();
    let mut sq = vec![0f64; w];
    for row in x.chunks_exact(w) {
        for ((s, &v), &m) in sq.iter_mut().zip(row).zip(&mean) {
            let d = f64::from(v) - m;
            *s += d * d;
        }
    }
    let var = sq.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), var)
}

/// The training-mode normalization of rows `x` `[n, w]` with scale `g` and
/// shift `b` (`[w]` each). The column statistics of `x` are computed once,
/// by [`NormTrain::new`] (the layer also needs them for its moving
/// averages), and kept for the forward and the backward.
pub(crate) struct NormTrain {
    mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` per column.
    inv_std: Vec<f32>,
}

impl NormTrain {
    /// The op for rows `x` (row-major, `w` columns); also returns the
    /// batch mean and biased variance.
    pub fn new(x: &[f32], w: usize, eps: f64) -> (Self, Vec<f32>, Vec<f32>) {
        let (mean, var) = column_stats(x, w);
        let inv_std = var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        (
            Self {
                mean: mean.clone(),
                inv_std,
            },
            mean,
            var,
        )
    }

    fn check(&self, w: usize) -> candle_core::Result<()> {
        if self.mean.len() != w || self.inv_std.len() != w {
            return Err(op_err("statistics computed for another width"));
        }
        Ok(())
    }
}

impl CustomOp3 for NormTrain {
    fn name(&self) -> &'static str {
        "mtrec-partitioned-norm"
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
        let (n, w) = l1.shape().dims2()?;
        let (x, g, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        if g.len() != w || b.len() != w {
            return Err(op_err("scale and shift must have one value per column"));
        }
        self.check(w)?;
        let (mean, r) = (&self.mean, &self.inv_std);
        let mut y = Vec::with_capacity(n * w);
        for row in x.chunks_exact(w) {
            y.extend(
                row.iter()
                    .zip(mean)
                    .zip(r)
                    .zip(g.iter().zip(b))
                    .map(|(((&v, &m), &r), (&g, &b))| (v - m) * r * g + b),
            );
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, w) = x.dims2()?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = g.flatten_all()?.to_vec1()?;
        let dy: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        self.check(w)?;
        let (mean, r) = (&self.mean, &self.inv_std);
        // Column sums db = sum dy and dg = sum dy * xhat, in f64.
        let mut db = vec![0f64; w];
        let mut dg = vec![0f64; w];
        for (xrow, dyrow) in xs.chunks_exact(w).zip(dy.chunks_exact(w)) {
            for j in 0..w {
                let xhat = (xrow[j] - mean[j]) * r[j];
                db[j] += f64::from(dyrow[j]);
                dg[j] += f64::from(dyrow[j] * xhat);
            }
        }
        let nf = n as f32;
        let (db32, dg32): (Vec<f32>, Vec<f32>) = (
            db.iter().map(|&v| v as f32).collect(),
            dg.iter().map(|&v| v as f32).collect(),
        );
        let coef: Vec<f32> = gs.iter().zip(r).map(|(&g, &r)| g * r / nf).collect();
        let mut dx = Vec::with_capacity(n * w);
        for (xrow, dyrow) in xs.chunks_exact(w).zip(dy.chunks_exact(w)) {
            for j in 0..w {
                let xhat = (xrow[j] - mean[j]) * r[j];
                dx.push(coef[j] * (nf * dyrow[j] - db32[j] - xhat * dg32[j]));
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, w), dev)?),
            Some(Tensor::from_vec(dg32, w, dev)?),
            Some(Tensor::from_vec(db32, w, dev)?),
        ))
    }
}
