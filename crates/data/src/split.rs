//! Seeded shuffles and train / validation / test splits of row indices.
//!
//! Everything is a function of `(n, seed)` only, so a run, its evaluation and a
//! later re-run see the same rows in each part.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{DataError, Result};

/// `0..n` in a random order fixed by `seed` (`StdRng` seeded from `seed`).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order
}

/// Disjoint row indices of the three parts; together they are `0..n`.
/// Each part is in shuffled order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
    pub test: Vec<usize>,
}

/// Part sizes: each `n * fraction` rounded, then moved by one row at a time
/// (the part furthest from its exact share first) until they sum to `n`, with
/// every part keeping at least one row.
fn part_sizes(n: usize, fractions: [f64; 3]) -> [usize; 3] {
    let target = fractions.map(|f| n as f64 * f);
    let mut sizes = target.map(|t| (t.round() as usize).max(1));
    // Terminates: n >= 3, so while the sum exceeds n some part holds > 1 row.
    loop {
        let sum: usize = sizes.iter().sum();
        if sum == n {
            return sizes;
        }
        let grow = sum < n;
        let mut best: Option<(usize, f64)> = None;
        for i in 0..3 {
            if !grow && sizes[i] <= 1 {
                continue;
            }
            // How much part i gains in accuracy by this move.
            let gap = if grow {
                target[i] - sizes[i] as f64
            } else {
                sizes[i] as f64 - target[i]
            };
            if best.is_none_or(|(_, g)| gap > g) {
                best = Some((i, gap));
            }
        }
        match best {
            Some((i, _)) if grow => sizes[i] += 1,
            Some((i, _)) => sizes[i] -= 1,
            None => return sizes, // unreachable for n >= 3
        }
    }
}

/// Each fraction finite and > 0, all summing to 1 (within 1e-6).
pub(crate) fn check_fractions(fractions: [f64; 3]) -> Result<()> {
    let sum: f64 = fractions.iter().sum();
    if fractions.iter().any(|f| !f.is_finite() || *f <= 0.0) || (sum - 1.0).abs() > 1e-6 {
        return Err(DataError::setting(
            "split fractions [train, valid, test]",
            format!("{fractions:?} (sum {sum})"),
            "each fraction > 0, all summing to 1",
        ));
    }
    Ok(())
}

/// Splits `0..n` into train / valid / test parts of sizes `n * fractions`
/// (rounded; every part gets at least one row), shuffled by `seed`.
///
/// Errors: `n < 3`; a fraction not finite or not > 0; fractions not summing
/// to 1 (within 1e-6).
pub fn split(n: usize, fractions: [f64; 3], seed: u64) -> Result<Split> {
    if n < 3 {
        return Err(DataError::setting(
            "rows to split",
            n,
            "at least 3, so that train, valid and test each get a row",
        ));
    }
    check_fractions(fractions)?;
    let [a, b, _] = part_sizes(n, fractions);
    let mut order = shuffled(n, seed);
    let test = order.split_off(a + b);
    let valid = order.split_off(a);
    Ok(Split {
        train: order,
        valid,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_union(s: &Split) -> Vec<usize> {
        let mut all: Vec<usize> = s.train.iter().chain(&s.valid).chain(&s.test).copied().collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn shuffled_is_a_seeded_permutation() {
        let a = shuffled(100, 7);
        assert_eq!(a, shuffled(100, 7));
        assert_ne!(a, shuffled(100, 8));
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn split_is_disjoint_covering_and_sized() {
        let s = split(1000, [0.8, 0.1, 0.1], 3).expect("split");
        assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (800, 100, 100));
        assert_eq!(sorted_union(&s), (0..1000).collect::<Vec<_>>());

        let s = split(10, [0.7, 0.15, 0.15], 3).expect("split");
        let sizes = [s.train.len(), s.valid.len(), s.test.len()];
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        for (size, f) in sizes.iter().zip([0.7, 0.15, 0.15]) {
            assert!((*size as f64 - 10.0 * f).abs() <= 1.0, "{sizes:?}");
        }
        assert_eq!(sorted_union(&s), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn split_is_deterministic_by_seed() {
        let a = split(500, [0.6, 0.2, 0.2], 11).expect("split");
        assert_eq!(a, split(500, [0.6, 0.2, 0.2], 11).expect("split"));
        assert_ne!(a, split(500, [0.6, 0.2, 0.2], 12).expect("split"));
    }

    #[test]
    fn every_part_non_empty_from_three_rows() {
        for n in 3..20 {
            for f in [[0.98, 0.01, 0.01], [0.01, 0.01, 0.98], [0.34, 0.33, 0.33]] {
                let s = split(n, f, 1).expect("split");
                assert!(
                    !s.train.is_empty() && !s.valid.is_empty() && !s.test.is_empty(),
                    "n = {n}, {f:?}: {s:?}"
                );
                assert_eq!(sorted_union(&s), (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn bad_fractions_and_too_few_rows_are_errors() {
        for f in [
            [0.5, 0.5, 0.5],
            [0.8, 0.2, 0.0],
            [1.2, -0.1, -0.1],
            [f64::NAN, 0.5, 0.5],
        ] {
            let msg = split(100, f, 1).expect_err("bad fractions").to_string();
            assert!(msg.contains("split fractions"), "{msg}");
            assert!(msg.contains("each fraction > 0, all summing to 1"), "{msg}");
        }
        let msg = split(2, [0.8, 0.1, 0.1], 1).expect_err("too few rows").to_string();
        assert!(msg.contains("`rows to split` = 2"), "{msg}");
        assert!(msg.contains("at least 3"), "{msg}");
    }
}
