//! Which rows of a file one reader of several keeps: the data-parallel
//! runs whose ranks each read only their own part of the training rows
//! (`[data] shards`).
//!
//! Rows are dealt out in turn (row i to part `i mod count`, i counted from
//! 0 in file order) rather than cut in contiguous blocks: every part then
//! has the same number of rows to within one without knowing the file's
//! length in advance, each part samples the whole file (no rank trains
//! only on the file's last days), and a streamed reader needs no seek.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Part `part` of `count`: the rows `i` with `i mod count == part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    part: u64,
    count: u64,
}

impl Stripe {
    /// Every row (one part).
    pub const WHOLE: Stripe = Stripe { part: 0, count: 1 };

    /// Part `part` of `count`; errors unless `count >= 1` and `part < count`.
    pub fn new(part: usize, count: usize) -> Result<Self> {
        if count == 0 || part >= count {
            return Err(DataError::setting(
                "shard",
                format!("part {part} of {count}"),
                "a part below the number of parts, at least one part",
            ));
        }
        Ok(Self {
            part: part as u64,
            count: count as u64,
        })
    }

    pub fn part(&self) -> usize {
        self.part as usize
    }

    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Whether row `row` (0-based, in file order) is in this part.
    pub fn holds(&self, row: u64) -> bool {
        row % self.count == self.part
    }

    /// How many of the rows `0..rows` are in part `part` of `count`
    /// (`part < count`).
    pub fn rows_of_part(rows: u64, part: u64, count: u64) -> u64 {
        (rows + count - 1 - part) / count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_in_exactly_one_part_and_the_parts_differ_by_at_most_one() {
        for count in 1..=5usize {
            for rows in 0..40u64 {
                let mut seen = vec![0u32; rows as usize];
                let mut sizes = Vec::new();
                for part in 0..count {
                    let s = Stripe::new(part, count).expect("stripe");
                    let held: Vec<u64> = (0..rows).filter(|&r| s.holds(r)).collect();
                    assert_eq!(held.len() as u64, Stripe::rows_of_part(rows, part as u64, count as u64));
                    for r in &held {
                        seen[*r as usize] += 1;
                    }
                    sizes.push(held.len());
                }
                assert!(seen.iter().all(|&n| n == 1), "rows {rows} count {count}: {seen:?}");
                let (lo, hi) = (sizes.iter().min().copied(), sizes.iter().max().copied());
                assert!(hi.unwrap_or(0) - lo.unwrap_or(0) <= 1, "{sizes:?}");
            }
        }
    }

    #[test]
    fn a_part_past_the_count_is_refused() {
        assert!(Stripe::new(2, 2).is_err());
        assert!(Stripe::new(0, 0).is_err());
        assert_eq!(Stripe::new(0, 1).expect("whole"), Stripe::WHOLE);
    }
}
