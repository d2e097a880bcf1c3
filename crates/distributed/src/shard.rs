//! Which rows of a global batch a rank trains on.

use std::ops::Range;

/// Rank `rank`'s part of `len` rows split over `size` ranks: contiguous,
/// in rank order, sizes differing by at most one, every row in exactly one
/// part. A global batch of `size * b` rows gives rank r the rows
/// `[r b, (r + 1) b)`, so that N ranks with batch b see, together, the
/// batches of one process with batch N b in the same order.
pub fn shard_range(len: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let rank = rank.min(size - 1);
    // u128: len * size cannot overflow.
    let at = |r: usize| (len as u128 * r as u128 / size as u128) as usize;
    at(rank)..at(rank + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_in_exactly_one_shard_in_order() {
        for size in 1..=7 {
            for len in 0..60 {
                let mut seen = Vec::new();
                for rank in 0..size {
                    let r = shard_range(len, rank, size);
                    assert!(r.len() <= len.div_ceil(size) && r.len() + 1 >= len / size);
                    seen.extend(r);
                }
                assert_eq!(seen, (0..len).collect::<Vec<_>>(), "len {len} size {size}");
            }
        }
    }

    #[test]
    fn full_global_batches_split_into_local_batches() {
        for r in 0..4 {
            assert_eq!(shard_range(4 * 128, r, 4), r * 128..(r + 1) * 128);
        }
        // A short last batch: 5 rows over 2 ranks.
        assert_eq!(shard_range(5, 0, 2), 0..2);
        assert_eq!(shard_range(5, 1, 2), 2..5);
        // Fewer rows than ranks: some ranks get none.
        assert_eq!(shard_range(1, 0, 2), 0..0);
        assert_eq!(shard_range(1, 1, 2), 0..1);
    }
}
