//! Elementwise passes of the fused ops, on rows of a row-major matrix,
//! written as zips so that they vectorise, split over the thread pool when
//! there is enough work to pay for it.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::fresh::{write_rows, Filled};

use super::gemm::threads;
use super::Activation;

/// Below this many elements a pass runs on the calling thread: handing work
/// to the pool costs a few microseconds (it matters for batch-1 latency).
const PAR_MIN: usize = 1 << 15;

/// Rows per parallel chunk for `rows` rows of width `width`: a few chunks per
/// thread, or all rows in one chunk when the pass is small.
pub(crate) fn chunk_rows(rows: usize, width: usize) -> usize {
    let t = threads();
    if t <= 1 || rows * width < PAR_MIN {
        rows.max(1)
    } else {
        rows.div_ceil(4 * t).max(1)
    }
}

/// Runs `f(first_row, rows_chunk)` over chunks of the rows of `data` (rows of
/// `width`), in parallel when worth it; returns what each chunk returned.
pub(crate) fn for_row_chunks<'a, T: Send, R: Send>(
    data: &'a mut [T],
    width: usize,
    f: impl Fn(usize, &'a mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    let rows = data.len().checked_div(width).unwrap_or(0);
    let per = chunk_rows(rows, width);
    if per >= rows {
        vec![f(0, data)]
    } else {
        data.par_chunks_mut(per * width)
            .enumerate()
            .map(|(i, c)| f(i * per, c))
            .collect()
    }
}

#[inline]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `row = act(row + bias)` in place.
#[inline]
pub(crate) fn bias_act_row(row: &mut [f32], bias: Option<&[f32]>, act: Activation) {
    match (act, bias) {
        (Activation::Relu, Some(b)) => {
            row.iter_mut().zip(b).for_each(|(v, b)| *v = (*v + b).max(0.0));
            return;
        }
        (_, Some(b)) => row.iter_mut().zip(b).for_each(|(v, b)| *v += b),
        (_, None) => {}
    }
    match act {
        Activation::Identity => {}
        Activation::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => row.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Tanh => row.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// The gradient at the pre-activation from the output `y` and its gradient
/// `dy` (rows of `width`), written into a fresh block: `dz = act'(y) * dy`
/// (for softmax, `y * (dy - <dy, y>)` per row).
pub(crate) fn act_grad_fresh<'a>(
    dz: &'a mut [MaybeUninit<f32>],
    y: &[f32],
    dy: &[f32],
    width: usize,
    act: Activation,
) -> candle_core::Result<(&'a mut [f32], Filled<'a>)> {
    let none = |_: &[f32], _: &[f32]| 0.0;
    match act {
        Activation::Identity => write_rows(dz, y, dy, width, none, |_, g, _| g),
        Activation::Relu => write_rows(dz, y, dy, width, none, |y, g, _| if y > 0.0 { g } else { 0.0 }),
        Activation::Sigmoid => write_rows(dz, y, dy, width, none, |y, g, _| g * y * (1.0 - y)),
        Activation::Tanh => write_rows(dz, y, dy, width, none, |y, g, _| g * (1.0 - y * y)),
        Activation::Softmax => write_rows(
            dz,
            y,
            dy,
            width,
            |y, g| y.iter().zip(g).map(|(a, b)| a * b).sum(),
            |y, g, dot| y * (g - dot),
        ),
    }
}

/// `acc += row`.
#[inline]
pub(crate) fn add_row(acc: &mut [f32], row: &[f32]) {
    acc.iter_mut().zip(row).for_each(|(a, r)| *a += r);
}

/// `acc += s * row`.
#[inline]
pub(crate) fn axpy_row(acc: &mut [f32], s: f32, row: &[f32]) {
    acc.iter_mut().zip(row).for_each(|(a, r)| *a += s * r);
}

#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: a plain fold would be one serial dependency chain.
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Column sums of the rows of `rows_data` (width `width`) grouped by
/// `group_rows` consecutive rows: returns `[groups, width]`.
pub(crate) fn group_col_sums(rows_data: &[f32], width: usize, group_rows: usize) -> Vec<f32> {
    let rows = rows_data.len().checked_div(width).unwrap_or(0);
    let groups = rows.checked_div(group_rows).unwrap_or(0);
    let per = chunk_rows(rows, width);
    let partial = |first: usize, chunk: &[f32]| {
        let mut acc = vec![0.0f32; groups * width];
        for (j, row) in chunk.chunks_exact(width).enumerate() {
            let g = (first + j) / group_rows;
            add_row(&mut acc[g * width..(g + 1) * width], row);
        }
        acc
    };
    if per >= rows {
        return partial(0, rows_data);
    }
    rows_data
        .par_chunks(per * width)
        .enumerate()
        .map(|(i, c)| partial(i * per, c))
        .reduce(
            || vec![0.0f32; groups * width],
            |mut a, b| {
                add_row(&mut a, &b);
                a
            },
        )
}
