//! The synthetic two-task data of the MMoE paper (Ma et al., "Modeling Task
//! Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
//! KDD 2018, section 3.2), whose task correlation is a setting: the data for
//! studying how multi-task architectures cope with less related tasks.

use mtrec_core::{TaskInfo, TaskKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, DenseColumns};
use crate::error::{DataError, Result};

/// Settings of the MMoE synthetic generator. In a TOML file any subset of the
/// fields may be given; the others take the defaults below.
///
/// The generator, as in the paper:
/// 1. two orthogonal unit vectors `u1, u2` in `R^d`;
/// 2. `w1 = c u1`, `w2 = c (p u1 + sqrt(1 - p^2) u2)`, so `cos(w1, w2) = p`;
/// 3. for each row, `x ~ N(0, I_d)` and, for task `i` in 1, 2,
///    `y_i = w_i^T x + sum_{k=1..m} sin(alpha_k w_i^T x + beta_k) + eps_i`,
///    `eps_i ~ N(0, 0.01)`.
///
/// The paper calls `p` the tasks' correlation: it is the cosine of the two
/// weight vectors, and the Pearson correlation of the labels rises with it, but
/// is not equal to it (the sine terms and the noise are non-linear / independent).
///
/// What the paper leaves open, and what we chose:
/// - `u1, u2`: drawn as two `N(0, I_d)` vectors made orthonormal by
///   Gram–Schmidt (the paper only says "two orthogonal unit vectors");
/// - `d = 100`, `c = 1`, `m = 10`, `alpha_k, beta_k ~ N(0, 1)`: the common
///   choices of public re-implementations. One set of `alpha_k, beta_k` is
///   drawn per data set and used by both tasks (the paper calls them given
///   parameters of the sine shapes, not per task);
/// - `eps_1, eps_2`: independent per task and row, standard deviation
///   `noise_std = 0.1` (the paper's variance 0.01);
/// - `rows = 12_000`: the paper does not give a size; this leaves room for a
///   10k / 1k / 1k split;
/// - random numbers: one `StdRng` seeded from `seed`, drawn in this order:
///   `u1`'s vector, `u2`'s vector, all `alpha`, all `beta`, then per row `x`,
///   `eps_1`, `eps_2`. Two settings that differ only in `correlation` (or
///   `scale`) therefore share `u1, u2, alpha, beta, x` and the noise;
/// - `kind = binary` is our addition: task `i`'s label is 1 where `y_i` is above
///   the median of `y_i` over the generated rows (balanced classes), else 0.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MmoeSynthetic {
    /// Number of rows to generate, >= 1.
    pub rows: usize,
    /// Input dimension `d`, >= 2 (two orthogonal directions are needed).
    pub dim: usize,
    /// `p = cos(w1, w2)`, in `[-1, 1]`.
    pub correlation: f64,
    /// Scale `c` of the weight vectors, finite and > 0.
    pub scale: f64,
    /// Number `m` of sine terms.
    pub sin_terms: usize,
    /// Standard deviation of the label noise, finite and >= 0.
    pub noise_std: f64,
    pub seed: u64,
    /// Regression (the paper) or binary (labels thresholded at the median).
    pub kind: TaskKind,
}

impl Default for MmoeSynthetic {
    fn default() -> Self {
        Self {
            rows: 12_000,
            dim: 100,
            correlation: 0.5,
            scale: 1.0,
            sin_terms: 10,
            noise_std: 0.1,
            seed: 1,
            kind: TaskKind::Regression,
        }
    }
}

/// The constants one generated data set was drawn with.
#[derive(Clone, Debug, PartialEq)]
pub struct MmoeSyntheticWeights {
    /// `w1 = c u1`, length `d`.
    pub w1: Vec<f64>,
    /// `w2 = c (p u1 + sqrt(1 - p^2) u2)`, length `d`.
    pub w2: Vec<f64>,
    /// `alpha_k`, length `m`, shared by both tasks.
    pub alpha: Vec<f64>,
    /// `beta_k`, length `m`, shared by both tasks.
    pub beta: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normals(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.sample(StandardNormal)).collect()
}

/// Two orthonormal vectors of length `dim` (>= 2): two Gaussian draws,
/// Gram–Schmidt. A draw that is (numerically) zero or parallel to `u1`, which
/// happens with probability 0, is redrawn.
fn orthonormal_pair(rng: &mut StdRng, dim: usize) -> (Vec<f64>, Vec<f64>) {
    let u1 = loop {
        let a = normals(rng, dim);
        let norm = dot(&a, &a).sqrt();
        if norm > 1e-8 {
            break a.into_iter().map(|v| v / norm).collect::<Vec<_>>();
        }
    };
    let u2 = loop {
        let b = normals(rng, dim);
        let proj = dot(&b, &u1);
        let r: Vec<f64> = b.iter().zip(&u1).map(|(b, u)| b - proj * u).collect();
        let norm = dot(&r, &r).sqrt();
        if norm > 1e-8 {
            break r.into_iter().map(|v| v / norm).collect();
        }
    };
    (u1, u2)
}

impl MmoeSyntheticWeights {
    /// The noise-free targets `[y_1, y_2]` of one input row `x` (length `d`).
    pub fn targets(&self, x: &[f64]) -> [f64; 2] {
        [&self.w1, &self.w2].map(|w| {
            let z = dot(w, x);
            z + self
                .alpha
                .iter()
                .zip(&self.beta)
                .map(|(a, b)| (a * z + b).sin())
                .sum::<f64>()
        })
    }
}

/// Median of a non-empty slice (mean of the two middle values for even length).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl MmoeSynthetic {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(DataError::setting("rows", self.rows, "at least 1"));
        }
        if self.dim < 2 {
            return Err(DataError::setting(
                "dim",
                self.dim,
                "at least 2 (two orthogonal directions are needed)",
            ));
        }
        if !(-1.0..=1.0).contains(&self.correlation) {
            return Err(DataError::setting(
                "correlation",
                self.correlation,
                "a number in [-1, 1]",
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(DataError::setting("scale", self.scale, "a finite number > 0"));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(DataError::setting("noise_std", self.noise_std, "a finite number >= 0"));
        }
        Ok(())
    }

    /// Generates the data set: dense features `x0..x{d-1}`, two tasks `task1`
    /// and `task2` of kind `kind`, every label present (all masks 1).
    /// Deterministic given the settings.
    pub fn generate(&self) -> Result<Dataset> {
        Ok(self.generate_with_weights()?.0)
    }

    /// [`MmoeSynthetic::generate`], also returning the constants drawn
    /// (`w1, w2, alpha, beta`), e.g. to check `cos(w1, w2) = p` or to compute
    /// the noise-free targets.
    pub fn generate_with_weights(&self) -> Result<(Dataset, MmoeSyntheticWeights)> {
        self.validate()?;
        let (d, p, c) = (self.dim, self.correlation, self.scale);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (u1, u2) = orthonormal_pair(&mut rng, d);
        let q = (1.0 - p * p).max(0.0).sqrt();
        let weights = MmoeSyntheticWeights {
            w1: u1.iter().map(|u| c * u).collect(),
            w2: u1.iter().zip(&u2).map(|(a, b)| c * (p * a + q * b)).collect(),
            alpha: normals(&mut rng, self.sin_terms),
            beta: normals(&mut rng, self.sin_terms),
        };

        let mut values = Vec::with_capacity(self.rows * d);
        let mut y1 = Vec::with_capacity(self.rows);
        let mut y2 = Vec::with_capacity(self.rows);
        for _ in 0..self.rows {
            let x = normals(&mut rng, d);
            let [t1, t2] = weights.targets(&x);
            let e1: f64 = rng.sample(StandardNormal);
            let e2: f64 = rng.sample(StandardNormal);
            y1.push(t1 + self.noise_std * e1);
            y2.push(t2 + self.noise_std * e2);
            values.extend(x.iter().map(|&v| v as f32));
        }

        let label = |y: f64, median: Option<f64>| -> f32 {
            match median {
                Some(m) => f32::from(u8::from(y > m)),
                None => y as f32,
            }
        };
        let (m1, m2) = match self.kind {
            TaskKind::Binary => (Some(median(&y1)), Some(median(&y2))),
            TaskKind::Regression => (None, None),
        };
        let labels: Vec<f32> = y1
            .iter()
            .zip(&y2)
            .flat_map(|(&a, &b)| [label(a, m1), label(b, m2)])
            .collect();

        let tasks = ["task1", "task2"]
            .map(|name| TaskInfo {
                name: name.into(),
                kind: self.kind,
            })
            .to_vec();
        let dense = DenseColumns {
            names: (0..d).map(|i| format!("x{i}")).collect(),
            values,
        };
        let masks = vec![1.0; labels.len()];
        let data = Dataset::new(tasks, None, Some(dense), labels, masks, None)?;
        Ok((data, weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(correlation: f64, rows: usize, seed: u64) -> MmoeSynthetic {
        MmoeSynthetic {
            rows,
            correlation,
            seed,
            ..MmoeSynthetic::default()
        }
    }

    fn pearson(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    fn label_columns(d: &Dataset) -> (Vec<f64>, Vec<f64>) {
        let a = d.labels.iter().step_by(2).map(|&v| f64::from(v)).collect();
        let b = d.labels.iter().skip(1).step_by(2).map(|&v| f64::from(v)).collect();
        (a, b)
    }

    #[test]
    fn label_correlation_rises_with_p() {
        for seed in [1, 2] {
            let corr: Vec<f64> = [0.0, 0.5, 0.9, 1.0]
                .iter()
                .map(|&p| {
                    let d = with(p, 5000, seed).generate().expect("generate");
                    let (a, b) = label_columns(&d);
                    pearson(&a, &b)
                })
                .collect();
            eprintln!("seed {seed}: label correlation at p = 0, 0.5, 0.9, 1: {corr:?}");
            assert!(corr.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {corr:?}");
            assert!(corr[0].abs() < 0.1, "seed {seed}: {corr:?}");
            assert!(corr[3] > 0.99, "seed {seed}: {corr:?}");
        }
    }

    #[test]
    fn identical_tasks_differ_only_by_noise() {
        let gen = MmoeSynthetic {
            noise_std: 0.0,
            ..with(1.0, 200, 5)
        };
        let d = gen.generate().expect("generate");
        let (a, b) = label_columns(&d);
        assert_eq!(a, b);
    }

    #[test]
    fn cosine_of_weights_is_p() {
        for p in [-1.0, -0.3, 0.0, 0.5, 0.9, 1.0] {
            for scale in [1.0, 2.5] {
                let gen = MmoeSynthetic { scale, ..with(p, 1, 3) };
                let (_, w) = gen.generate_with_weights().expect("generate");
                let n1 = dot(&w.w1, &w.w1).sqrt();
                let n2 = dot(&w.w2, &w.w2).sqrt();
                assert!((dot(&w.w1, &w.w2) / (n1 * n2) - p).abs() < 1e-6, "p = {p}");
                assert!((n1 - scale).abs() < 1e-9 && (n2 - scale).abs() < 1e-9);
                assert_eq!(w.w1.len(), 100);
                assert_eq!((w.alpha.len(), w.beta.len()), (10, 10));
            }
        }
    }

    #[test]
    fn labels_follow_the_formula() {
        let gen = with(0.7, 50, 9);
        let noiseless = MmoeSynthetic {
            noise_std: 0.0,
            ..gen.clone()
        };
        let (d, w) = noiseless.generate_with_weights().expect("generate");
        let (noisy, _) = gen.generate_with_weights().expect("generate");
        let x = &d.dense.as_ref().expect("dense").values;
        let mut diffs = Vec::new();
        for r in 0..d.rows() {
            let row = &x[r * 100..(r + 1) * 100];
            for (k, wk) in [&w.w1, &w.w2].into_iter().enumerate() {
                // The paper's formula written out here, not `targets`:
                // y = w^T x + sum_m sin(alpha_m w^T x + beta_m).
                let mut z = 0.0;
                for (wi, xi) in wk.iter().zip(row) {
                    z += wi * f64::from(*xi);
                }
                let mut target = z;
                for m in 0..10 {
                    target += (w.alpha[m] * z + w.beta[m]).sin();
                }
                let label = f64::from(d.labels[2 * r + k]);
                assert!(
                    (label - target).abs() <= 1e-5 * (1.0 + target.abs()),
                    "row {r} task {k}: label {label}, formula {target}"
                );
                diffs.push(f64::from(noisy.labels[2 * r + k]) - label);
            }
        }
        // `targets` (what the generator used) agrees with the formula.
        let row0: Vec<f64> = x[..100].iter().map(|&v| f64::from(v)).collect();
        assert!((w.targets(&row0)[0] - f64::from(d.labels[0])).abs() < 1e-4);
        // Same draws, so the noisy labels differ by eps ~ N(0, 0.1^2) only.
        let sd = (diffs.iter().map(|e| e * e).sum::<f64>() / diffs.len() as f64).sqrt();
        assert!((0.07..0.13).contains(&sd), "noise std {sd}");
    }

    #[test]
    fn shape_names_and_masks() {
        let d = with(0.5, 30, 1).generate().expect("generate");
        assert_eq!(d.rows(), 30);
        let dense = d.dense.as_ref().expect("dense");
        assert_eq!(dense.names.len(), 100);
        assert_eq!((dense.names[0].as_str(), dense.names[99].as_str()), ("x0", "x99"));
        let names: Vec<_> = d.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["task1", "task2"]);
        assert!(d.tasks.iter().all(|t| t.kind == TaskKind::Regression));
        assert!(d.masks.iter().all(|&m| m == 1.0));
        assert!(d.sparse.is_none() && d.domains.is_none());
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = with(0.5, 100, 4).generate().expect("generate");
        assert_eq!(a, with(0.5, 100, 4).generate().expect("generate"));
        let b = with(0.5, 100, 5).generate().expect("generate");
        assert_ne!(a.labels, b.labels);
        assert_ne!(a.dense, b.dense);
    }

    #[test]
    fn binary_labels_are_balanced() {
        let gen = MmoeSynthetic {
            kind: TaskKind::Binary,
            ..with(0.5, 2001, 6)
        };
        let d = gen.generate().expect("generate");
        assert!(d.tasks.iter().all(|t| t.kind == TaskKind::Binary));
        assert!(d.labels.iter().all(|&v| v == 0.0 || v == 1.0));
        let (a, b) = label_columns(&d);
        for col in [a, b] {
            let pos = col.iter().sum::<f64>();
            // Above a strict median of 2001 distinct values: exactly 1000.
            assert_eq!(pos, 1000.0);
        }
        // Related tasks stay related after thresholding.
        let (a, b) = label_columns(&d);
        assert!(pearson(&a, &b) > 0.1);
    }

    #[test]
    fn settings_parse_from_partial_toml() {
        let gen: MmoeSynthetic = toml::from_str("correlation = 0.9\nkind = \"binary\"\n").expect("parse");
        assert_eq!(
            gen,
            MmoeSynthetic {
                correlation: 0.9,
                kind: TaskKind::Binary,
                ..MmoeSynthetic::default()
            }
        );
        let gen: MmoeSynthetic = toml::from_str("").expect("parse");
        assert_eq!(gen, MmoeSynthetic::default());
        let err = toml::from_str::<MmoeSynthetic>("corelation = 0.9").expect_err("typo");
        assert!(err.to_string().contains("corelation"), "{err}");
    }

    #[test]
    fn bad_settings_name_setting_and_range() {
        let cases = [
            (
                MmoeSynthetic {
                    correlation: 1.5,
                    ..Default::default()
                },
                "`correlation` = 1.5",
                "[-1, 1]",
            ),
            (
                MmoeSynthetic {
                    correlation: f64::NAN,
                    ..Default::default()
                },
                "`correlation` = NaN",
                "[-1, 1]",
            ),
            (
                MmoeSynthetic {
                    dim: 1,
                    ..Default::default()
                },
                "`dim` = 1",
                "at least 2",
            ),
            (
                MmoeSynthetic {
                    rows: 0,
                    ..Default::default()
                },
                "`rows` = 0",
                "at least 1",
            ),
            (
                MmoeSynthetic {
                    scale: 0.0,
                    ..Default::default()
                },
                "`scale` = 0",
                "> 0",
            ),
            (
                MmoeSynthetic {
                    noise_std: -0.1,
                    ..Default::default()
                },
                "`noise_std` = -0.1",
                ">= 0",
            ),
        ];
        for (gen, setting, range) in cases {
            let msg = gen.generate().expect_err("invalid").to_string();
            assert!(msg.contains(setting) && msg.contains(range), "{msg}");
        }
    }
}
