//! A bounds-checked, safe front to the `gemm` crate's matmul kernels.
//!
//! `gemm::gemm` takes raw pointers and strides; this module and `fresh`
//! (uninitialised output buffers) hold the only `unsafe` of mtrec-core.
//! Every call checks, before the kernel runs, that every element the strides
//! can reach lies inside its slice and that the destination's elements are
//! distinct (row-major, unit column stride), so no caller can make it read or
//! write out of bounds or race with itself.

use std::mem::MaybeUninit;

use super::fresh::{assume_filled, Filled};

/// A strided read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows x cols` starting at `data[0]`.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: 1, cs: cols }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|a| (cols - 1).checked_mul(self.cs).and_then(|b| a.checked_add(b)));
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// How many threads the matmuls use: candle's setting (`RAYON_NUM_THREADS`,
/// else the number of cores), read once.
pub(crate) fn threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(candle_core::utils::get_num_threads)
}

/// `dst = lhs @ rhs` (or `dst += lhs @ rhs` when `accumulate`), with `dst`
/// row-major `m x n` (row stride `dst_rs >= n`), `lhs` `m x k`, `rhs` `k x n`,
/// on the calling thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) -> candle_core::Result<()> {
    matmul_with(m, n, k, dst, dst_rs, accumulate, lhs, rhs, false)
}

/// [`matmul`], split over the thread pool by the kernel itself when `parallel`.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) -> candle_core::Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dst_view = Mat {
        data: dst,
        rs: dst_rs,
        cs: 1,
    };
    if dst_rs < n || !dst_view.fits(m, n) {
        return fail("destination");
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return Ok(());
    }
    check_operands(m, n, k, lhs, rhs)?;
    // SAFETY: the operands were checked by `check_operands`; every element
    // the kernel writes (`(m-1)*dst_rs + n-1`) lies inside `dst` (checked
    // above), the destination rows do not overlap (`dst_rs >= n`, unit
    // column stride) and `dst` is borrowed mutably, so it aliases neither
    // operand.
    unsafe { kernel(m, n, k, dst.as_mut_ptr(), dst_rs, accumulate, lhs, rhs, parallel) };
    Ok(())
}

/// `dst = lhs @ rhs` into a fresh (uninitialised) block of exactly `m x n`
/// floats, row-major, on the calling thread: the block comes back
/// initialised, with its token (`super::fresh`).
#[allow(unsafe_code)]
pub(crate) fn matmul_fresh<'a>(
    m: usize,
    n: usize,
    k: usize,
    dst: &'a mut [MaybeUninit<f32>],
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) -> candle_core::Result<(&'a mut [f32], Filled<'a>)> {
    if m.checked_mul(n) != Some(dst.len()) {
        return fail("fresh destination");
    }
    if m > 0 && n > 0 {
        if k == 0 {
            dst.iter_mut().for_each(|v| {
                v.write(0.0);
            });
        } else {
            check_operands(m, n, k, lhs, rhs)?;
            // SAFETY: operands checked by `check_operands`; `dst` holds
            // exactly the `m x n` row-major elements the kernel writes
            // (`dst_rs = n`), is borrowed mutably (no aliasing), and is never
            // read: without accumulation the kernel stores each element
            // before it reads it (gemm-common 0.19: `alpha` is forced to zero
            // on the first pass over `k` of every column block, and the
            // micro-kernels, the small-matrix and the gemv paths store
            // `beta * acc` without reading; later passes read what the first
            // one stored). This holds for the x86 and generic kernels we
            // build; gemm's `experimental-apple-amx` kernels (not enabled)
            // copy partial destination tiles first and would read it. The
            // column-major gemv path forms a `&mut [f32]` over the
            // not-yet-written block, which it only writes.
            unsafe { kernel(m, n, k, dst.as_mut_ptr().cast(), n, false, lhs, rhs, false) };
        }
    }
    // SAFETY: every element was written above (by the kernel or the zero
    // fill), or there are none.
    Ok(unsafe { assume_filled(dst) })
}

fn fail<T>(what: &str) -> candle_core::Result<T> {
    Err(candle_core::Error::Msg(format!("mtrec matmul: {what} out of bounds")))
}

fn check_operands(m: usize, n: usize, k: usize, lhs: Mat<'_>, rhs: Mat<'_>) -> candle_core::Result<()> {
    if !lhs.fits(m, k) {
        return fail("left operand");
    }
    if !rhs.fits(k, n) {
        return fail("right operand");
    }
    Ok(())
}

/// The `gemm` crate's kernel: `dst (+)= lhs @ rhs`, `dst` row-major with row
/// stride `dst_rs`.
///
/// # Safety
/// `m, n, k > 0`; `lhs` and `rhs` fit `m x k` and `k x n`
/// ([`check_operands`]); `dst` is valid for writes (and, with `accumulate`,
/// reads) of the `m x n` elements `dst[r * dst_rs + c]`, `dst_rs >= n`, and
/// aliases neither operand.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    parallel: bool,
) {
    let par = if parallel && threads() > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract above is the kernel's: every element it
    // reads (`lhs`, `rhs`: `(m-1)*rs + (k-1)*cs` and `(k-1)*rs + (n-1)*cs`,
    // checked to lie inside their slices) and writes (`dst`) is valid.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // [n, k]
        let mut dst = vec![1.0f32; m * n];
        matmul(m, n, k, &mut dst, n, true, Mat::rows(&a, k), Mat::transposed(&bt, k)).unwrap();
        for r in 0..m {
            for c in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[r * k + p] * bt[c * k + p]).sum::<f32>();
                assert!((dst[r * n + c] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let a = vec![0.0f32; 5];
        let mut dst = vec![0.0f32; 4];
        assert!(matmul(2, 2, 3, &mut dst, 2, false, Mat::rows(&a, 3), Mat::rows(&a, 2)).is_err());
        assert!(matmul(2, 2, 1, &mut dst, 3, false, Mat::rows(&a, 1), Mat::rows(&a, 2)).is_err());
    }
}
