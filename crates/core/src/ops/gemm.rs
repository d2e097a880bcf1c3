//! A bounds-checked, safe front to the `gemm` crate's matmul kernels.
//!
//! `gemm::gemm` takes raw pointers and strides; this is the only `unsafe` of
//! mtrec-core. Every call checks, before the kernel runs, that every element
//! the strides can reach lies inside its slice and that the destination's
//! elements are distinct (row-major, unit column stride), so no caller can
//! make it read or write out of bounds or race with itself.

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
    let fail = |what: &str| Err(candle_core::Error::Msg(format!("mtrec matmul: {what} out of bounds")));
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
    if !lhs.fits(m, k) {
        return fail("left operand");
    }
    if !rhs.fits(k, n) {
        return fail("right operand");
    }
    let par = if parallel && threads() > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element the kernel reads (`lhs`, `rhs`: `(m-1)*rs +
    // (k-1)*cs` and `(k-1)*rs + (n-1)*cs`) and writes (`dst`: `(m-1)*dst_rs
    // + n-1`) was checked to be inside its slice above; the destination rows
    // do not overlap (`dst_rs >= n`, unit column stride) and `dst` is borrowed
    // mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
    Ok(())
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
