//! Output buffers written in full without being zero-filled first.
//!
//! Every op allocates its outputs, and `vec![0.0; n]` costs a memset of
//! memory the op then overwrites anyway (about 3% of the MMoE training step's
//! CPU time, perf; the step went from 70-72 to 66-69 ms without it). A fresh
//! buffer starts uninitialised: [`fresh_vec`] hands it out as
//! `&mut [MaybeUninit<f32>]`, the op writes it in blocks with writers that
//! initialise a whole block and return a [`Filled`] token for it (the matmul
//! without accumulation, `super::gemm::matmul_fresh`, and [`write_rows`]
//! here), and the buffer becomes a `Vec<f32>` only if the tokens cover it
//! exactly. A writer that fails leaves its block unfilled, and then the
//! buffer is dropped, never read.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Proof that one block of a fresh buffer has been initialised completely:
/// its address range. Made only by the writers, for the block they wrote;
/// the lifetime is that of the block's borrow, so a token cannot outlive its
/// buffer and be shown to another one at the same address.
#[must_use]
#[derive(Debug)]
pub(crate) struct Filled<'a> {
    start: usize,
    len: usize,
    _block: PhantomData<&'a mut [f32]>,
}

fn err(msg: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("mtrec fresh buffer: {msg}"))
}

/// `block` as initialised, with its token.
///
/// # Safety
/// Every element of `block` must have been written.
#[allow(unsafe_code)]
pub(super) unsafe fn assume_filled(block: &mut [MaybeUninit<f32>]) -> (&mut [f32], Filled<'_>) {
    let token = Filled {
        start: block.as_ptr() as usize,
        len: block.len(),
        _block: PhantomData,
    };
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller
    // guarantees every element is initialised.
    let init = unsafe { &mut *(block as *mut [MaybeUninit<f32>] as *mut [f32]) };
    (init, token)
}

/// A `len`-float vector written by `fill`, which returns one token per block
/// it wrote; an error unless the tokens tile the buffer exactly.
#[allow(unsafe_code)]
pub(crate) fn fresh_vec(
    len: usize,
    fill: impl for<'b> FnOnce(&'b mut [MaybeUninit<f32>]) -> candle_core::Result<Vec<Filled<'b>>>,
) -> candle_core::Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let buf = v
        .spare_capacity_mut()
        .get_mut(..len)
        .ok_or_else(|| err("capacity below the requested length"))?;
    let base = buf.as_ptr() as usize;
    let mut tokens = fill(buf)?;
    // By (start, len): an empty block sharing its start with a full one
    // sorts first and does not look like an overlap.
    tokens.sort_unstable_by_key(|t| (t.start, t.len));
    let size = std::mem::size_of::<f32>();
    let mut at = base;
    for t in &tokens {
        if t.start != at {
            return Err(err("blocks leave a gap or overlap"));
        }
        at += t.len * size;
    }
    if at != base + len * size {
        return Err(err("blocks do not cover the buffer"));
    }
    // SAFETY: the tokens, each made for a block whose every element was
    // written, tile exactly the first `len` elements of the capacity.
    unsafe { v.set_len(len) };
    Ok(v)
}

/// Writes `dst` (rows of `width`) from two inputs of the same shape, row by
/// row: `out[j] = f(a[j], b[j], s)` with `s = per_row(a_row, b_row)` computed
/// once per row (a softmax's dot product, say).
pub(crate) fn write_rows<'a>(
    dst: &'a mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    width: usize,
    per_row: impl Fn(&[f32], &[f32]) -> f32,
    f: impl Fn(f32, f32, f32) -> f32,
) -> candle_core::Result<(&'a mut [f32], Filled<'a>)> {
    if a.len() != dst.len() || b.len() != dst.len() {
        return Err(err("inputs do not match the block"));
    }
    if dst.is_empty() {
        // SAFETY: an empty block has no element to write.
        #[allow(unsafe_code)]
        return Ok(unsafe { assume_filled(dst) });
    }
    if width == 0 || !dst.chunks_exact(width).remainder().is_empty() {
        return Err(err("the block is not whole rows"));
    }
    for ((out, ra), rb) in dst
        .chunks_exact_mut(width)
        .zip(a.chunks_exact(width))
        .zip(b.chunks_exact(width))
    {
        let s = per_row(ra, rb);
        for ((o, &x), &y) in out.iter_mut().zip(ra).zip(rb) {
            o.write(f(x, y, s));
        }
    }
    // SAFETY: `dst`, `a` and `b` have the same length, a multiple of
    // `width`, so the exact chunks and the zips above visit, and write,
    // every element of `dst`.
    #[allow(unsafe_code)]
    Ok(unsafe { assume_filled(dst) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_that_tile_the_buffer_make_a_vector() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [10.0f32, 20.0, 30.0, 40.0];
        let v = fresh_vec(4, |buf| {
            let (lo, hi) = buf.split_at_mut(2);
            let (_, t2) = write_rows(hi, &a[2..], &b[2..], 2, |_, _| 0.0, |x, y, _| x + y)?;
            let (_, t1) = write_rows(lo, &a[..2], &b[..2], 1, |x, _| x[0], |x, y, s| x * y + s)?;
            Ok(vec![t2, t1])
        })
        .unwrap();
        assert_eq!(v, [11.0, 42.0, 33.0, 44.0]);
    }

    #[test]
    fn a_block_left_unwritten_is_an_error() {
        let a = [1.0f32, 2.0];
        let r = fresh_vec(4, |buf| {
            let (_, t) = write_rows(&mut buf[..2], &a, &a, 2, |_, _| 0.0, |x, _, _| x)?;
            Ok(vec![t])
        });
        assert!(r.is_err());
        // (Two tokens for one block cannot both be returned: each keeps its
        // block mutably borrowed, so the borrow checker rejects it.)
        assert!(write_rows(&mut [MaybeUninit::uninit(); 3], &a, &a, 1, |_, _| 0.0, |x, _, _| x).is_err());
        // Empty blocks (zero-width rows) are filled trivially, even next to
        // a full block with the same start.
        let v = fresh_vec(2, |buf| {
            let (_, t0) = write_rows(&mut [], &[], &[], 0, |_, _| 0.0, |x, _, _| x)?;
            drop(t0);
            let (lo, hi) = buf.split_at_mut(0);
            let (_, te) = write_rows(lo, &[], &[], 0, |_, _| 0.0, |x, _, _| x)?;
            let (_, tf) = write_rows(hi, &a, &a, 2, |_, _| 0.0, |x, y, _| x + y)?;
            Ok(vec![tf, te])
        })
        .unwrap();
        assert_eq!(v, [2.0, 4.0]);
    }
}
