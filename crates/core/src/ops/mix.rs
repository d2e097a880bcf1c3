//! The gate-weighted sum of expert outputs, `out[b] = sum_e w[b, e] * bank_e[b]`,
//! over one bank `[n, B, d]` or two banks side by side (`[own; shared]`, as
//! PLE's task gates read them) without concatenating them, with a one-pass
//! backward: `dw[b, e] = <dout[b], bank_e[b]>`, `dbank_e[b] = w[b, e] * dout[b]`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{axpy_row, chunk_rows, dot, for_row_chunks};
use super::{cpu_slice, op_error, storage_slice};

const OP: &str = "mix";

fn err(msg: String) -> candle_core::Error {
    op_error(OP, msg)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    cpu_slice(OP, s, l)
}

/// Checks `w [B, N]` against banks `[n_j, B, d]` with `sum n_j = N`; returns
/// `(B, N, d)`.
fn dims(wl: &Layout, banks: &[&Layout]) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, total) = match *wl.dims() {
        [r, t] => (r, t),
        ref other => return Err(err(format!("weights must be [B, n], got {other:?}"))),
    };
    let mut n = 0;
    let mut width = None;
    for l in banks {
        match *l.dims() {
            [c, r, d] if r == rows && width.is_none_or(|w| w == d) => {
                n += c;
                width = Some(d);
            }
            ref other => return Err(err(format!("bank {other:?} does not fit weights [{rows}, {total}]"))),
        }
    }
    if n != total {
        return Err(err(format!("weights have {total} columns for {n} experts")));
    }
    Ok((rows, total, width.unwrap_or(0)))
}

/// The experts of the banks, in weight-column order: `(bank data, index in bank)`.
fn experts<'a>(banks: &[(&'a [f32], usize)]) -> Vec<(&'a [f32], usize)> {
    banks.iter().flat_map(|&(s, c)| (0..c).map(move |e| (s, e))).collect()
}

fn forward(w: &[f32], banks: &[(&[f32], usize)], rows: usize, total: usize, d: usize) -> Vec<f32> {
    let ex = experts(banks);
    let mut out = vec![0.0f32; rows * d];
    for_row_chunks(&mut out, d, |first, chunk| {
        for (j, row) in chunk.chunks_exact_mut(d).enumerate() {
            let r = first + j;
            for (k, &(s, e)) in ex.iter().enumerate() {
                let at = (e * rows + r) * d;
                axpy_row(row, w[r * total + k], &s[at..at + d]);
            }
        }
    });
    out
}

/// `(dw, dbank per bank)`.
fn backward(
    w: &[f32],
    banks: &[(&[f32], usize)],
    dout: &[f32],
    rows: usize,
    total: usize,
    d: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let ex = experts(banks);
    let mut dw = vec![0.0f32; rows * total];
    for_row_chunks(&mut dw, total, |first, chunk| {
        for (j, dwr) in chunk.chunks_exact_mut(total).enumerate() {
            let r = first + j;
            let g = &dout[r * d..(r + 1) * d];
            for (v, &(s, e)) in dwr.iter_mut().zip(&ex) {
                let at = (e * rows + r) * d;
                *v = dot(g, &s[at..at + d]);
            }
        }
    });
    let mut offset = 0;
    let mut dbanks = Vec::with_capacity(banks.len());
    for &(_, count) in banks {
        let mut g = vec![0.0f32; count * rows * d];
        let per = chunk_rows(count * rows, d);
        let fill = |first: usize, chunk: &mut [f32]| {
            for (j, row) in chunk.chunks_exact_mut(d).enumerate() {
                let (e, r) = ((first + j) / rows, (first + j) % rows);
                let s = w[r * total + offset + e];
                row.iter_mut()
                    .zip(&dout[r * d..(r + 1) * d])
                    .for_each(|(v, g)| *v = s * g);
            }
        };
        if per >= count * rows {
            fill(0, &mut g);
        } else {
            g.par_chunks_mut(per * d)
                .enumerate()
                .for_each(|(i, c)| fill(i * per, c));
        }
        dbanks.push(g);
        offset += count;
    }
    (dw, dbanks)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Mix;

fn tensor_backward(
    w: &Tensor,
    banks: &[&Tensor],
    dout: &Tensor,
) -> candle_core::Result<(Option<Tensor>, Vec<Option<Tensor>>)> {
    let dout = dout.contiguous()?;
    let (wg, wl) = w.storage_and_layout();
    let (dg, dl) = dout.storage_and_layout();
    let guards: Vec<_> = banks.iter().map(|b| b.storage_and_layout()).collect();
    let ws = storage_slice(OP, &wg, wl)?;
    let ds = storage_slice(OP, &dg, dl)?;
    let layouts: Vec<&Layout> = guards.iter().map(|(_, l)| *l).collect();
    let (rows, total, d) = dims(wl, &layouts)?;
    if ds.len() != rows * d {
        return Err(err("output gradient does not fit the output".into()));
    }
    let mut data = Vec::with_capacity(banks.len());
    for (g, l) in &guards {
        data.push((storage_slice(OP, g, l)?, l.dims()[0]));
    }
    let (dw, dbanks) = backward(ws, &data, ds, rows, total, d);
    let dw = if w.track_op() {
        Some(Tensor::from_vec(dw, w.shape(), w.device())?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(banks.len());
    for (b, g) in banks.iter().zip(dbanks) {
        out.push(if b.track_op() {
            Some(Tensor::from_vec(g, b.shape(), b.device())?)
        } else {
            None
        });
    }
    Ok((dw, out))
}

impl CustomOp2 for Mix {
    fn name(&self) -> &'static str {
        "mtrec-mix"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, total, d) = dims(l1, &[l2])?;
        let out = forward(slice(s1, l1)?, &[(slice(s2, l2)?, l2.dims()[0])], rows, total, d);
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }
    fn bwd(
        &self,
        w: &Tensor,
        bank: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dw, mut db) = tensor_backward(w, &[bank], grad)?;
        Ok((dw, db.pop().flatten()))
    }
}

impl CustomOp3 for Mix {
    fn name(&self) -> &'static str {
        "mtrec-mix2"
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
        let (rows, total, d) = dims(l1, &[l2, l3])?;
        let banks = [(slice(s2, l2)?, l2.dims()[0]), (slice(s3, l3)?, l3.dims()[0])];
        let out = forward(slice(s1, l1)?, &banks, rows, total, d);
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }
    fn bwd(
        &self,
        w: &Tensor,
        b1: &Tensor,
        b2: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dw, db) = tensor_backward(w, &[b1, b2], grad)?;
        let mut db = db.into_iter();
        Ok((dw, db.next().flatten(), db.next().flatten()))
    }
}
