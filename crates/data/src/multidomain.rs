//! A multi-domain (multi-scenario) synthetic generator: one recommendation
//! problem served in several domains of very different sizes, whose labels
//! follow a preference function shared by all domains plus a domain-specific
//! shift of controllable strength. The data for studying multi-domain models
//! (STAR, SAR-Net) against shared ones: with `domain_shift = 0` the domains
//! are identical and a single shared model is right; as it grows, each
//! domain's labels depend more on its own function.

use mtrec_core::{TaskInfo, TaskKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, DenseColumns, DomainColumn, SequenceColumn, SparseColumns};
use crate::error::{DataError, Result};

/// Settings of the multi-domain synthetic generator. In a TOML file any
/// subset of the fields may be given; the others take the defaults below.
///
/// The generator:
/// 1. users have a latent taste `U_u ~ N(0, I_k)`; item categories have a
///    latent `C_c ~ N(0, I_k)`; item `i` has a uniformly drawn category `c(i)`
///    and the latent `V_i = (C_c(i) + N(0, I_k)) / sqrt(2)` (items of one
///    category are alike, so the category field is informative);
/// 2. every row has a user, an item (both uniform), a domain (exactly
///    `rows * domain_shares[p]` rows in domain `p`, rounded, at least one
///    each, in random order) and `dense` context features `x ~ N(0, I_m)`;
/// 3. a *preference function* `G` is a set of random constants: a shared
///    part (interaction weights `a`, category biases `e`, dense weights `w`)
///    and, per domain `p`, its own `a_p, e_p, w_p` and a domain bias `b_p`,
///    all `N(0, 1)`. On a row,
///    `shared = (<U_u, a * V_i> / sqrt(k) + e[c(i)] + <w, x> / sqrt(m)) / sqrt(3)`,
///    `domain_p = (<U_u, a_p * V_i> / sqrt(k) + b_p + e_p[c(i)] + <w_p, x> / sqrt(m)) / 2`
///    (each about unit variance) and
///    `G = sqrt(1 - s^2) * shared + s * domain_p` with `s = domain_shift`:
///    `s = 0` makes every domain identical, `s = 1` gives each domain its own
///    function, unrelated to the others';
/// 4. tasks: `G_0` is common to all tasks and `G_1..G_K` are each task's own;
///    task `t`'s score is `f_t = sqrt(r) G_0 + sqrt(1 - r) G_(t+1)` with
///    `r = task_correlation`, so that two tasks' scores correlate `r` in
///    expectation over the draws of the functions;
/// 5. labels: `y_t ~ Bernoulli(sigmoid(signal * f_t))`, every label present;
///    with `funnel`, the tasks are the steps of a conversion funnel in task
///    order (impression -> click -> like -> ...): step `t` is reached only
///    after step `t - 1`, `y_t = y_(t-1) * Bernoulli(sigmoid(signal * f_t))`,
///    each label end to end over every row (as AITM and ESMM's CTCVR model
///    them), so positives get sparser step by step.
///
/// Columns: sparse fields `user_id`, `item_id`, `item_category` and (with
/// `domain_feature`, so that models without domain-specific parameters can
/// still tell domains apart) `domain`, each with id 0 reserved for
/// out-of-vocabulary / padding (never generated: user `u` has id `u + 1`,
/// vocabulary `users + 1`); dense `x0..x{m-1}`; the domain column with names
/// `domain0..`; binary tasks `click`, `like`, `share`, `follow`, then `task5`...
///
/// Behaviour sequences (for SAR-Net-like models), with `history > 0`: every
/// user has a log of 1 to `history` past behaviours (length uniform), each in
/// a domain drawn by `domain_shares` and on the item the user prefers (task
/// 0's score in that domain, features `x = 0`) among 4 uniform candidates, so
/// the log reflects the user's taste across domains. Every row carries its
/// user's log as two aligned sequence columns: `hist_item_id` (item ids,
/// sharing `item_id`'s vocabulary) and `hist_domain` (domain id + 1, sharing
/// `domain`'s vocabulary), padded with 0. The logs come from their own random
/// stream (seeded from `seed`), so `history` changes no other column.
///
/// Logged exposure bias (with `exposure_bias > 0`; off by default): a
/// promotion boosts some items' exposure, and the logged clicks of a boosted
/// row are inflated whatever the user's preference. A fraction
/// `promoted_items` of the items is on promotion and each row of such an
/// item is boosted with probability `promotion_rate`; the sparse field
/// `promoted` (after the others; id 1: not boosted, 2: boosted) says which
/// rows were. A boosted row's logged labels (every task) are drawn with the
/// logit `signal * f_t + exposure_bias` instead of `signal * f_t`, from the
/// same uniform as its unbiased label, so a boost only adds positives.
/// [`MultiDomainSynthetic::generate_logged`] returns both label sets; a run
/// trains and validates on the logged labels and tests against the unbiased
/// ones (`Logged::with_unbiased_rows`), the users' preference alone. Within
/// a promoted item the flag varies from row to row, so the boost can be told
/// apart from the item's own appeal. Its draws come from their own random
/// stream (seeded from `seed`): with it on, every other column and every
/// unbiased label equal those generated with it off.
///
/// Random numbers: one `StdRng` seeded from `seed`, drawn in this order: user
/// latents, category latents, item categories and latents, the functions
/// `G_0..G_K`, the domain order, then per row user, item, `x`, and one uniform
/// per task. None of it depends on `domain_shift`, `task_correlation` or
/// `signal`: settings that differ only in those share every row's user, item,
/// domain and features, and the uniforms the labels are drawn with.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MultiDomainSynthetic {
    /// Number of rows, at least `domains`.
    pub rows: usize,
    /// Number of domains `D`, >= 1.
    pub domains: usize,
    /// Fraction of the rows in each domain: `domains` values, each > 0,
    /// summing to 1. The default is skewed: one large, one mid, one tiny domain.
    pub domain_shares: Vec<f64>,
    /// `s` in `[0, 1]`: how much the labels depend on the domain.
    pub domain_shift: f64,
    /// Number of binary tasks, 1 to 16.
    pub tasks: usize,
    /// `r` in `[0, 1]`: the correlation of two tasks' scores (in expectation).
    pub task_correlation: f64,
    /// Vocabulary sizes of `user_id`, `item_id`, `item_category`, >= 1.
    pub users: usize,
    pub items: usize,
    pub categories: usize,
    /// Number `m` of dense features (0: none).
    pub dense: usize,
    /// Dimension `k` of the user / item latents, >= 1.
    pub latent_dim: usize,
    /// Scale of the scores before the sigmoid, finite and >= 0 (0: random labels).
    pub signal: f64,
    /// Also give the domain id as a sparse field `domain`.
    pub domain_feature: bool,
    /// Longest behaviour log per user (0: no sequence columns).
    pub history: usize,
    /// Labels of a conversion funnel: task `t` is 1 only where task `t - 1` is.
    pub funnel: bool,
    /// Logit added to a boosted row's logged labels, finite and >= 0
    /// (0: no exposure bias and no `promoted` column).
    pub exposure_bias: f64,
    /// Fraction of the items on promotion, in (0, 1].
    pub promoted_items: f64,
    /// Chance that a row of a promoted item is boosted, in (0, 1].
    pub promotion_rate: f64,
    pub seed: u64,
}

/// A data set generated with exposure bias: its labels are the logged ones,
/// `unbiased` the same rows' labels without the boost (row-major `[rows, K]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Logged {
    pub data: Dataset,
    /// `None` without exposure bias (the logged labels are unbiased).
    pub unbiased: Option<Vec<f32>>,
}

impl Logged {
    /// The data set with the unbiased labels on `rows` (e.g. a split's test
    /// rows) and the logged ones elsewhere. Errors if a row is out of range.
    pub fn with_unbiased_rows(self, rows: &[usize]) -> Result<Dataset> {
        let mut data = self.data;
        if let Some(unbiased) = &self.unbiased {
            data.replace_labels(rows, unbiased)?;
        }
        Ok(data)
    }
}

impl Default for MultiDomainSynthetic {
    fn default() -> Self {
        Self {
            rows: 20_000,
            domains: 3,
            domain_shares: vec![0.7, 0.25, 0.05],
            domain_shift: 0.5,
            tasks: 2,
            task_correlation: 0.6,
            users: 200,
            items: 200,
            categories: 20,
            dense: 4,
            latent_dim: 8,
            signal: 2.5,
            domain_feature: true,
            history: 10,
            funnel: false,
            exposure_bias: 0.0,
            promoted_items: 0.3,
            promotion_rate: 0.5,
            seed: 1,
        }
    }
}

/// The random constants of one preference function `G` (see
/// [`MultiDomainSynthetic`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceFunction {
    /// Interaction weights `a`, length `k`.
    pub interaction: Vec<f64>,
    /// Category biases `e`, length `categories`.
    pub category_bias: Vec<f64>,
    /// Dense weights `w`, length `m`.
    pub dense_weights: Vec<f64>,
    /// Per domain: `a_p`, `e_p`, `w_p`.
    pub domain_interaction: Vec<Vec<f64>>,
    pub domain_category_bias: Vec<Vec<f64>>,
    pub domain_dense_weights: Vec<Vec<f64>>,
    /// Per domain: `b_p`.
    pub domain_bias: Vec<f64>,
}

/// Everything a generated data set was drawn from: the noise-free scores of
/// any (user, item, features, domain) combination can be computed from it.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiDomainTruth {
    /// `[users][k]`.
    pub user_latent: Vec<Vec<f64>>,
    /// `[items][k]`.
    pub item_latent: Vec<Vec<f64>>,
    /// Category of every item.
    pub item_category: Vec<u32>,
    /// `G_0` (common to all tasks), then one per task.
    pub functions: Vec<PreferenceFunction>,
    pub domain_shift: f64,
    pub task_correlation: f64,
    pub signal: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn weighted_dot(u: &[f64], a: &[f64], v: &[f64]) -> f64 {
    u.iter().zip(a).zip(v).map(|((u, a), v)| u * a * v).sum()
}

fn normals(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.sample(StandardNormal)).collect()
}

impl PreferenceFunction {
    fn draw(rng: &mut StdRng, k: usize, categories: usize, m: usize, domains: usize) -> Self {
        let interaction = normals(rng, k);
        let category_bias = normals(rng, categories);
        let dense_weights = normals(rng, m);
        let mut f = Self {
            interaction,
            category_bias,
            dense_weights,
            domain_interaction: Vec::with_capacity(domains),
            domain_category_bias: Vec::with_capacity(domains),
            domain_dense_weights: Vec::with_capacity(domains),
            domain_bias: Vec::with_capacity(domains),
        };
        for _ in 0..domains {
            f.domain_interaction.push(normals(rng, k));
            f.domain_category_bias.push(normals(rng, categories));
            f.domain_dense_weights.push(normals(rng, m));
            f.domain_bias.push(rng.sample(StandardNormal));
        }
        f
    }

    /// `(shared, domain_p)` on one row, each of about unit variance.
    fn parts(&self, u: &[f64], v: &[f64], category: usize, x: &[f64], domain: usize) -> (f64, f64) {
        let sk = (u.len().max(1) as f64).sqrt();
        let sm = (x.len().max(1) as f64).sqrt();
        let shared = (weighted_dot(u, &self.interaction, v) / sk
            + self.category_bias[category]
            + dot(&self.dense_weights, x) / sm)
            / 3f64.sqrt();
        let specific = (weighted_dot(u, &self.domain_interaction[domain], v) / sk
            + self.domain_bias[domain]
            + self.domain_category_bias[domain][category]
            + dot(&self.domain_dense_weights[domain], x) / sm)
            / 2.0;
        (shared, specific)
    }

    /// `G = sqrt(1 - s^2) shared + s domain_p`.
    fn value(&self, s: f64, u: &[f64], v: &[f64], category: usize, x: &[f64], domain: usize) -> f64 {
        let (shared, specific) = self.parts(u, v, category, x, domain);
        (1.0 - s * s).max(0.0).sqrt() * shared + s * specific
    }
}

impl MultiDomainTruth {
    /// Task `task`'s noise-free logit `signal * f_t` for user `user`, item
    /// `item`, dense features `x` (length `m`) in domain `domain`.
    ///
    /// # Panics
    /// If an index is out of range or `x` is too short.
    pub fn logit(&self, task: usize, user: usize, item: usize, x: &[f64], domain: usize) -> f64 {
        let u = &self.user_latent[user];
        let v = &self.item_latent[item];
        let c = self.item_category[item] as usize;
        let s = self.domain_shift;
        let r = self.task_correlation;
        let common = self.functions[0].value(s, u, v, c, x, domain);
        let own = self.functions[task + 1].value(s, u, v, c, x, domain);
        self.signal * (r.sqrt() * common + (1.0 - r).max(0.0).sqrt() * own)
    }
}

/// Row counts per domain: `rows * share` rounded, at least 1 each, adjusted
/// one row at a time (the domain furthest from its exact share first) until
/// they sum to `rows`. Needs `rows >= shares.len()`.
fn domain_counts(rows: usize, shares: &[f64]) -> Vec<usize> {
    let target: Vec<f64> = shares.iter().map(|s| rows as f64 * s).collect();
    let mut counts: Vec<usize> = target.iter().map(|t| (t.round() as usize).max(1)).collect();
    loop {
        let sum: usize = counts.iter().sum();
        if sum == rows {
            return counts;
        }
        let grow = sum < rows;
        let best = (0..counts.len()).filter(|&i| grow || counts[i] > 1).max_by(|&i, &j| {
            let gap = |i: usize| {
                if grow {
                    target[i] - counts[i] as f64
                } else {
                    counts[i] as f64 - target[i]
                }
            };
            gap(i).total_cmp(&gap(j)).then(j.cmp(&i))
        });
        match best {
            Some(i) if grow => counts[i] += 1,
            Some(i) => counts[i] -= 1,
            None => return counts, // unreachable when rows >= shares.len()
        }
    }
}

/// The names of the first tasks; later ones are `task<k>` (1-based).
const TASK_NAMES: [&str; 4] = ["click", "like", "share", "follow"];

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl MultiDomainSynthetic {
    /// Checks every setting against its allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.domains == 0 {
            return Err(DataError::setting("domains", self.domains, "at least 1"));
        }
        if self.rows < self.domains {
            return Err(DataError::setting(
                "rows",
                self.rows,
                format!("at least `domains` = {} (every domain gets a row)", self.domains),
            ));
        }
        if self.domain_shares.len() != self.domains {
            return Err(DataError::setting(
                "domain_shares",
                format!("{:?}", self.domain_shares),
                format!(
                    "one share per domain: `domains` = {} but {} shares are given",
                    self.domains,
                    self.domain_shares.len()
                ),
            ));
        }
        let sum: f64 = self.domain_shares.iter().sum();
        if self.domain_shares.iter().any(|s| !(s.is_finite() && *s > 0.0)) || (sum - 1.0).abs() > 1e-6 {
            return Err(DataError::setting(
                "domain_shares",
                format!("{:?} (sum {sum})", self.domain_shares),
                "each share > 0, all summing to 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.domain_shift) {
            return Err(DataError::setting(
                "domain_shift",
                self.domain_shift,
                "a number in [0, 1]",
            ));
        }
        if !(1..=16).contains(&self.tasks) {
            return Err(DataError::setting("tasks", self.tasks, "1 to 16"));
        }
        if !(0.0..=1.0).contains(&self.task_correlation) {
            return Err(DataError::setting(
                "task_correlation",
                self.task_correlation,
                "a number in [0, 1]",
            ));
        }
        for (name, v) in [
            ("users", self.users),
            ("items", self.items),
            ("categories", self.categories),
            ("latent_dim", self.latent_dim),
        ] {
            if v == 0 {
                return Err(DataError::setting(name, v, "at least 1"));
            }
        }
        if u32::try_from(self.users.max(self.items)).is_err() {
            return Err(DataError::setting(
                "users / items",
                self.users.max(self.items),
                "below 2^32",
            ));
        }
        if !(self.signal.is_finite() && self.signal >= 0.0) {
            return Err(DataError::setting("signal", self.signal, "a finite number >= 0"));
        }
        if !(self.exposure_bias.is_finite() && self.exposure_bias >= 0.0) {
            return Err(DataError::setting(
                "exposure_bias",
                self.exposure_bias,
                "a finite number >= 0 (0: off)",
            ));
        }
        for (name, v) in [
            ("promoted_items", self.promoted_items),
            ("promotion_rate", self.promotion_rate),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(DataError::setting(name, v, "a number in (0, 1]"));
            }
        }
        Ok(())
    }

    /// Task names, in column order.
    pub fn task_names(&self) -> Vec<String> {
        (0..self.tasks)
            .map(|t| {
                TASK_NAMES
                    .get(t)
                    .map_or_else(|| format!("task{}", t + 1), |n| n.to_string())
            })
            .collect()
    }

    /// Generates the data set (with exposure bias: its logged labels).
    /// Deterministic given the settings.
    pub fn generate(&self) -> Result<Dataset> {
        Ok(self.generate_with_truth()?.0)
    }

    /// [`MultiDomainSynthetic::generate`], also returning the constants drawn.
    pub fn generate_with_truth(&self) -> Result<(Dataset, MultiDomainTruth)> {
        let (logged, truth) = self.generate_logged_with_truth()?;
        Ok((logged.data, truth))
    }

    /// The data set with logged labels, and the unbiased ones when
    /// `exposure_bias > 0`.
    pub fn generate_logged(&self) -> Result<Logged> {
        Ok(self.generate_logged_with_truth()?.0)
    }

    /// Which items are on promotion, then per row whether it is boosted:
    /// from their own stream, so that the other columns do not change.
    fn promotions(&self, items_of_rows: impl Iterator<Item = usize>) -> Vec<bool> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x6A09_E667_F3BC_C908);
        let promoted: Vec<bool> = (0..self.items)
            .map(|_| rng.random::<f64>() < self.promoted_items)
            .collect();
        items_of_rows
            .map(|i| {
                let draw: f64 = rng.random();
                promoted[i] && draw < self.promotion_rate
            })
            .collect()
    }

    /// [`MultiDomainSynthetic::generate_logged`], also returning the constants drawn.
    pub fn generate_logged_with_truth(&self) -> Result<(Logged, MultiDomainTruth)> {
        self.validate()?;
        let (k, m, d) = (self.latent_dim, self.dense, self.domains);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let user_latent: Vec<Vec<f64>> = (0..self.users).map(|_| normals(&mut rng, k)).collect();
        let category_latent: Vec<Vec<f64>> = (0..self.categories).map(|_| normals(&mut rng, k)).collect();
        let mut item_category = Vec::with_capacity(self.items);
        let mut item_latent = Vec::with_capacity(self.items);
        for _ in 0..self.items {
            let c = rng.random_range(0..self.categories);
            let noise = normals(&mut rng, k);
            item_category.push(c as u32);
            item_latent.push(
                category_latent[c]
                    .iter()
                    .zip(noise)
                    .map(|(a, b)| (a + b) / 2f64.sqrt())
                    .collect(),
            );
        }
        let functions = (0..=self.tasks)
            .map(|_| PreferenceFunction::draw(&mut rng, k, self.categories, m, d))
            .collect();
        let truth = MultiDomainTruth {
            user_latent,
            item_latent,
            item_category,
            functions,
            domain_shift: self.domain_shift,
            task_correlation: self.task_correlation,
            signal: self.signal,
        };

        let counts = domain_counts(self.rows, &self.domain_shares);
        let mut domain_ids: Vec<u32> = counts
            .iter()
            .enumerate()
            .flat_map(|(p, &n)| std::iter::repeat_n(p as u32, n))
            .collect();
        domain_ids.shuffle(&mut rng);

        let biased = self.exposure_bias > 0.0;
        let fields = 3 + usize::from(self.domain_feature) + usize::from(biased);
        let mut ids = Vec::with_capacity(self.rows * fields);
        let mut values = Vec::with_capacity(self.rows * m);
        let mut labels = Vec::with_capacity(self.rows * self.tasks);
        let mut logits = Vec::with_capacity(self.rows * self.tasks);
        let mut draws = Vec::with_capacity(self.rows * self.tasks);
        let mut items_of_rows = Vec::with_capacity(self.rows);
        for &p in &domain_ids {
            let user = rng.random_range(0..self.users);
            let item = rng.random_range(0..self.items);
            let x = normals(&mut rng, m);
            // Id 0 is reserved for out-of-vocabulary values.
            ids.extend([user as u32 + 1, item as u32 + 1, truth.item_category[item] + 1]);
            if self.domain_feature {
                ids.push(p + 1);
            }
            if biased {
                ids.push(0); // `promoted`, set below
            }
            values.extend(x.iter().map(|&v| v as f32));
            items_of_rows.push(item);
            for t in 0..self.tasks {
                let draw: f64 = rng.random();
                let logit = truth.logit(t, user, item, &x, p as usize);
                // The uniform is drawn either way: `funnel` changes no other draw.
                let reached = !self.funnel || t == 0 || labels.last() == Some(&1.0);
                labels.push(f32::from(u8::from(reached && draw < sigmoid(logit))));
                logits.push(logit);
                draws.push(draw);
            }
        }
        let unbiased = biased.then(|| labels.clone());
        if biased {
            let boosted = self.promotions(items_of_rows.into_iter());
            let k = self.tasks;
            for (r, &b) in boosted.iter().enumerate() {
                ids[r * fields + fields - 1] = 1 + u32::from(b);
                if b {
                    for j in r * k..(r + 1) * k {
                        // A funnel step is reached where the previous logged step is 1.
                        let reached = !self.funnel || j == r * k || labels[j - 1] == 1.0;
                        labels[j] = f32::from(u8::from(reached && draws[j] < sigmoid(logits[j] + self.exposure_bias)));
                    }
                }
            }
        }

        let mut field_names = vec!["user_id".to_string(), "item_id".into(), "item_category".into()];
        let mut vocab = vec![self.users + 1, self.items + 1, self.categories + 1];
        if self.domain_feature {
            field_names.push("domain".into());
            vocab.push(d + 1);
        }
        if biased {
            field_names.push("promoted".into());
            vocab.push(3);
        }
        let sparse = SparseColumns {
            fields: field_names,
            vocab,
            ids,
        };
        let dense = (m > 0).then(|| DenseColumns {
            names: (0..m).map(|i| format!("x{i}")).collect(),
            values,
        });
        let domains = DomainColumn {
            names: (0..d).map(|p| format!("domain{p}")).collect(),
            ids: domain_ids,
        };
        let tasks = self
            .task_names()
            .into_iter()
            .map(|name| TaskInfo {
                name,
                kind: TaskKind::Binary,
            })
            .collect();
        let masks = vec![1.0; labels.len()];
        let users_of_rows: Vec<usize> = sparse.ids.chunks(fields).map(|r| r[0] as usize - 1).collect();
        let mut data = Dataset::new(tasks, Some(sparse), dense, labels, masks, Some(domains))?;
        if self.history > 0 {
            data = data.with_sequences(self.sequences(&truth, &users_of_rows))?;
        }
        Ok((Logged { data, unbiased }, truth))
    }

    /// The behaviour-log columns `hist_item_id` and `hist_domain` of rows
    /// whose users are `users_of_rows` (0-based).
    fn sequences(&self, truth: &MultiDomainTruth, users_of_rows: &[usize]) -> Vec<SequenceColumn> {
        const CANDIDATES: usize = 4;
        let len = self.history;
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x9E37_79B9_7F4A_7C15);
        let x0 = vec![0.0; self.dense];
        let cumulative: Vec<f64> = self
            .domain_shares
            .iter()
            .scan(0.0, |acc, s| {
                *acc += s;
                Some(*acc)
            })
            .collect();
        // Per user: (item id + 1, domain id + 1), padded to `len` with 0.
        let mut logs: Vec<(Vec<u32>, Vec<u32>, u32)> = Vec::with_capacity(self.users);
        for u in 0..self.users {
            let n = rng.random_range(1..=len);
            let (mut items, mut doms) = (vec![0u32; len], vec![0u32; len]);
            for j in 0..n {
                let draw: f64 = rng.random();
                let p = cumulative.iter().position(|&c| draw < c).unwrap_or(self.domains - 1);
                let mut best = (f64::NEG_INFINITY, 0usize);
                for _ in 0..CANDIDATES {
                    let i = rng.random_range(0..self.items);
                    let score = truth.logit(0, u, i, &x0, p);
                    if score > best.0 {
                        best = (score, i);
                    }
                }
                items[j] = best.1 as u32 + 1;
                doms[j] = p as u32 + 1;
            }
            logs.push((items, doms, n as u32));
        }
        let rows = users_of_rows.len();
        let mut item_ids = Vec::with_capacity(rows * len);
        let mut domain_ids = Vec::with_capacity(rows * len);
        let mut lengths = Vec::with_capacity(rows);
        for &u in users_of_rows {
            let (items, doms, n) = &logs[u];
            item_ids.extend_from_slice(items);
            domain_ids.extend_from_slice(doms);
            lengths.push(*n);
        }
        vec![
            SequenceColumn {
                name: "hist_item_id".into(),
                max_len: len,
                ids: item_ids,
                lengths: lengths.clone(),
                vocab: self.items + 1,
                share_with: Some("item_id".into()),
            },
            SequenceColumn {
                name: "hist_domain".into(),
                max_len: len,
                ids: domain_ids,
                lengths,
                vocab: self.domains + 1,
                share_with: self.domain_feature.then(|| "domain".to_string()),
            },
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn small(rows: usize, seed: u64) -> MultiDomainSynthetic {
        MultiDomainSynthetic {
            rows,
            seed,
            ..MultiDomainSynthetic::default()
        }
    }

    fn domain_ids(d: &Dataset) -> &[u32] {
        &d.domains.as_ref().unwrap().ids
    }

    /// A funnel's step is 1 only where the previous step is, and is the
    /// plain generator's label there (same draws): positives get sparser.
    #[test]
    fn funnel_steps_follow_the_previous_step() {
        let plain = MultiDomainSynthetic {
            tasks: 3,
            ..small(3000, 5)
        };
        let funnel = MultiDomainSynthetic {
            funnel: true,
            ..plain.clone()
        };
        let (a, b) = (plain.generate().unwrap(), funnel.generate().unwrap());
        assert_eq!((&a.sparse, &a.dense), (&b.sparse, &b.dense));
        let mut positives = [0usize; 3];
        for (ya, yb) in a.labels.chunks(3).zip(b.labels.chunks(3)) {
            assert_eq!(yb[0], ya[0]);
            for t in 1..3 {
                assert_eq!(yb[t], ya[t] * yb[t - 1], "{ya:?} {yb:?}");
            }
            for t in 0..3 {
                positives[t] += usize::from(yb[t] == 1.0);
            }
        }
        assert!(
            positives[0] > positives[1] && positives[1] > positives[2] && positives[2] > 0,
            "{positives:?}"
        );
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = small(500, 3).generate().unwrap();
        assert_eq!(a, small(500, 3).generate().unwrap());
        let b = small(500, 4).generate().unwrap();
        assert_ne!(a.labels, b.labels);
        assert_ne!(a.sparse, b.sparse);
    }

    #[test]
    fn domain_shares_are_exact_and_every_domain_non_empty() {
        let d = small(2000, 1).generate().unwrap();
        let ids = domain_ids(&d);
        let count = |p: u32| ids.iter().filter(|&&i| i == p).count();
        assert_eq!([count(0), count(1), count(2)], [1400, 500, 100]);
        // Rows are not grouped by domain.
        assert!(ids[..100].iter().any(|&i| i != ids[0]));
        // A tiny share still gets a row.
        for rows in [3, 5, 50] {
            let g = MultiDomainSynthetic {
                domain_shares: vec![0.98, 0.01, 0.01],
                ..small(rows, 2)
            };
            let d = g.generate().unwrap();
            let ids = domain_ids(&d);
            for p in 0..3 {
                assert!(ids.contains(&p), "rows = {rows}: domain {p} is empty");
            }
        }
    }

    #[test]
    fn columns_names_and_vocabularies() {
        let d = small(300, 1).generate().unwrap();
        let s = d.sparse.as_ref().unwrap();
        assert_eq!(s.fields, ["user_id", "item_id", "item_category", "domain"]);
        assert_eq!(s.vocab, [201, 201, 21, 4]);
        // Id 0 (out of vocabulary) is never generated.
        assert!(s.ids.iter().all(|&i| i > 0));
        // The `domain` field repeats the domain column, shifted by one.
        let doms: Vec<u32> = s.ids.chunks(4).map(|r| r[3] - 1).collect();
        assert_eq!(doms, domain_ids(&d));
        assert_eq!(d.dense.as_ref().unwrap().names, ["x0", "x1", "x2", "x3"]);
        let names: Vec<&str> = d.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["click", "like"]);
        assert_eq!(d.domains.as_ref().unwrap().names, ["domain0", "domain1", "domain2"]);
        assert!(d.labels.iter().all(|&v| v == 0.0 || v == 1.0));
        let rate = d.labels.iter().sum::<f32>() / d.labels.len() as f32;
        assert!((0.2..0.8).contains(&rate), "positive rate {rate}");

        let g = MultiDomainSynthetic {
            tasks: 6,
            dense: 0,
            domain_feature: false,
            ..small(50, 1)
        };
        let d = g.generate().unwrap();
        assert!(d.dense.is_none());
        assert_eq!(d.sparse.as_ref().unwrap().fields.len(), 3);
        let names: Vec<&str> = d.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["click", "like", "share", "follow", "task5", "task6"]);
    }

    #[test]
    fn zero_shift_makes_domains_identical() {
        let x = [0.3, -1.0, 0.5, 2.0];
        let (_, t0) = MultiDomainSynthetic {
            domain_shift: 0.0,
            ..small(100, 7)
        }
        .generate_with_truth()
        .unwrap();
        let (_, t1) = MultiDomainSynthetic {
            domain_shift: 0.4,
            ..small(100, 7)
        }
        .generate_with_truth()
        .unwrap();
        for task in 0..2 {
            for (user, item) in [(0, 0), (5, 17), (199, 199)] {
                let a: Vec<f64> = (0..3).map(|p| t0.logit(task, user, item, &x, p)).collect();
                assert!(a.iter().all(|v| (v - a[0]).abs() < 1e-12), "{a:?}");
                let b: Vec<f64> = (0..3).map(|p| t1.logit(task, user, item, &x, p)).collect();
                assert!((b[0] - b[1]).abs() > 1e-6 && (b[1] - b[2]).abs() > 1e-6, "{b:?}");
            }
        }
    }

    /// The labels' dependence on the domain, measured on the data: the spread
    /// across domains of the positive rate within each item category.
    fn domain_dependence(d: &Dataset, task: usize) -> f64 {
        let s = d.sparse.as_ref().unwrap();
        let ids = domain_ids(d);
        let k = d.task_count();
        let mut pos = vec![[0.0f64; 3]; 20];
        let mut n = vec![[0.0f64; 3]; 20];
        for (r, &p) in ids.iter().enumerate() {
            let c = s.ids[r * 4 + 2] as usize - 1;
            let p = p as usize;
            pos[c][p] += f64::from(d.labels[r * k + task]);
            n[c][p] += 1.0;
        }
        let mut total = 0.0;
        for c in 0..20 {
            let rates: Vec<f64> = (0..3).map(|p| pos[c][p] / n[c][p].max(1.0)).collect();
            let mean = rates.iter().sum::<f64>() / 3.0;
            total += rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 3.0;
        }
        total / 20.0
    }

    #[test]
    fn labels_depend_on_the_domain_more_as_the_shift_grows() {
        let stats: Vec<[f64; 2]> = [0.0, 0.3, 0.6, 1.0]
            .iter()
            .map(|&s| {
                let d = MultiDomainSynthetic {
                    domain_shift: s,
                    domain_shares: vec![0.4, 0.3, 0.3],
                    ..small(30_000, 5)
                }
                .generate()
                .unwrap();
                [domain_dependence(&d, 0), domain_dependence(&d, 1)]
            })
            .collect();
        eprintln!("domain dependence at s = 0, 0.3, 0.6, 1: {stats:?}");
        for t in 0..2 {
            assert!(stats.windows(2).all(|w| w[0][t] < w[1][t]), "task {t}: {stats:?}");
            // At s = 0 only sampling noise: about p(1-p)/n = 0.25/500.
            assert!(stats[0][t] < 2e-3, "task {t}: {stats:?}");
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

    /// The correlation of two tasks' scores is `r` in expectation over the
    /// draws of the functions (one draw of, e.g., 20 category biases can
    /// correlate by chance): averaged over seeds.
    #[test]
    fn task_scores_correlate_as_set() {
        for r in [0.0, 0.6, 1.0] {
            let seeds = 1..=6u64;
            let mut total = 0.0;
            for seed in seeds.clone() {
                let g = MultiDomainSynthetic {
                    task_correlation: r,
                    ..small(2000, seed)
                };
                let (d, truth) = g.generate_with_truth().unwrap();
                let s = d.sparse.as_ref().unwrap();
                let x = &d.dense.as_ref().unwrap().values;
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for row in 0..d.rows() {
                    let (u, i) = (s.ids[row * 4] as usize - 1, s.ids[row * 4 + 1] as usize - 1);
                    let xr: Vec<f64> = x[row * 4..row * 4 + 4].iter().map(|&v| f64::from(v)).collect();
                    let p = domain_ids(&d)[row] as usize;
                    a.push(truth.logit(0, u, i, &xr, p));
                    b.push(truth.logit(1, u, i, &xr, p));
                }
                total += pearson(&a, &b);
            }
            let c = total / seeds.count() as f64;
            assert!((c - r).abs() < 0.1, "r = {r}: mean score correlation {c}");
        }
    }

    /// The labels against the generator's formula written out here (not
    /// `MultiDomainTruth::logit`): rows binned by that logit, each bin's
    /// positive rate within sampling error of its mean `sigmoid(logit)`.
    #[test]
    fn labels_follow_the_formula() {
        let (d, t) = MultiDomainSynthetic {
            domain_shift: 0.7,
            ..small(20_000, 8)
        }
        .generate_with_truth()
        .unwrap();
        let (s, r) = (t.domain_shift, t.task_correlation);
        // The defaults the formula below is written for.
        assert_eq!(
            (t.signal, t.user_latent[0].len(), d.dense.as_ref().unwrap().names.len()),
            (2.5, 8, 4)
        );
        let ids = &d.sparse.as_ref().unwrap().ids;
        let xs = &d.dense.as_ref().unwrap().values;
        // G = sqrt(1 - s^2) shared + s domain_p, with k = 8 latents, m = 4 dense.
        let g = |f: &PreferenceFunction, u: &[f64], v: &[f64], c: usize, x: &[f64], p: usize| -> f64 {
            let mut uav = 0.0;
            let mut uapv = 0.0;
            for i in 0..8 {
                uav += u[i] * f.interaction[i] * v[i];
                uapv += u[i] * f.domain_interaction[p][i] * v[i];
            }
            let (mut wx, mut wpx) = (0.0, 0.0);
            for (j, xj) in x.iter().enumerate().take(4) {
                wx += f.dense_weights[j] * xj;
                wpx += f.domain_dense_weights[p][j] * xj;
            }
            let shared = (uav / 8f64.sqrt() + f.category_bias[c] + wx / 2.0) / 3f64.sqrt();
            let own = (uapv / 8f64.sqrt() + f.domain_bias[p] + f.domain_category_bias[p][c] + wpx / 2.0) / 2.0;
            (1.0 - s * s).sqrt() * shared + s * own
        };
        for task in 0..2 {
            let mut rows: Vec<(f64, f64)> = (0..d.rows())
                .map(|row| {
                    let (u, i) = (ids[row * 4] as usize - 1, ids[row * 4 + 1] as usize - 1);
                    let c = t.item_category[i] as usize;
                    let x: Vec<f64> = xs[row * 4..row * 4 + 4].iter().map(|&v| f64::from(v)).collect();
                    let p = domain_ids(&d)[row] as usize;
                    let (uu, vv) = (&t.user_latent[u], &t.item_latent[i]);
                    let logit = 2.5
                        * (r.sqrt() * g(&t.functions[0], uu, vv, c, &x, p)
                            + (1.0 - r).sqrt() * g(&t.functions[task + 1], uu, vv, c, &x, p));
                    (logit, f64::from(d.labels[row * 2 + task]))
                })
                .collect();
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut rates = Vec::new();
            for bin in rows.chunks(2000) {
                let n = bin.len() as f64;
                let expected = bin.iter().map(|(z, _)| 1.0 / (1.0 + (-z).exp())).sum::<f64>() / n;
                let observed = bin.iter().map(|(_, y)| y).sum::<f64>() / n;
                let se = (expected * (1.0 - expected) / n).sqrt();
                assert!(
                    (observed - expected).abs() < 4.0 * se + 1e-3,
                    "task {task}: bin rate {observed} vs sigmoid {expected}"
                );
                rates.push(observed);
            }
            // Not vacuous: the bins span most of (0, 1).
            assert!(rates[0] < 0.15 && rates[9] > 0.85, "task {task}: {rates:?}");
        }
    }

    #[test]
    fn behaviour_logs_span_domains_and_follow_the_user() {
        let g = small(400, 3);
        let d = g.generate().unwrap();
        let names: Vec<&str> = d.sequences.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["hist_item_id", "hist_domain"]);
        let (items, doms) = (&d.sequences[0], &d.sequences[1]);
        assert_eq!((items.max_len, items.vocab), (10, 201));
        assert_eq!((doms.max_len, doms.vocab), (10, 4));
        assert_eq!(items.share_with.as_deref(), Some("item_id"));
        assert_eq!(doms.share_with.as_deref(), Some("domain"));
        assert_eq!(items.lengths, doms.lengths);
        let s = d.sparse.as_ref().unwrap();
        let mut seen = std::collections::HashMap::new();
        let mut domains_seen = std::collections::HashSet::new();
        for r in 0..d.rows() {
            let n = items.lengths[r] as usize;
            assert!((1..=10).contains(&n));
            let it = &items.ids[r * 10..(r + 1) * 10];
            let dm = &doms.ids[r * 10..(r + 1) * 10];
            // Real behaviours have an item and a domain; padding is 0 in both.
            assert!(it[..n].iter().all(|&i| i > 0) && dm[..n].iter().all(|&p| p > 0));
            assert!(it[n..].iter().all(|&i| i == 0) && dm[n..].iter().all(|&p| p == 0));
            domains_seen.extend(dm[..n].iter().copied());
            // Every row of a user carries the same log.
            let user = s.ids[r * 4];
            let log = (it.to_vec(), dm.to_vec());
            assert_eq!(seen.entry(user).or_insert_with(|| log.clone()), &log);
        }
        assert_eq!(domains_seen.len(), 3, "behaviours span every domain");
        // The logs do not change the other columns.
        let without = MultiDomainSynthetic { history: 0, ..g }.generate().unwrap();
        assert!(without.sequences.is_empty());
        assert_eq!((&without.sparse, &without.labels), (&d.sparse, &d.labels));
    }

    #[test]
    fn settings_parse_and_bad_settings_name_the_setting() {
        let g: MultiDomainSynthetic = toml::from_str("domain_shift = 0.9\ntasks = 1\n").unwrap();
        assert_eq!(
            g,
            MultiDomainSynthetic {
                domain_shift: 0.9,
                tasks: 1,
                ..MultiDomainSynthetic::default()
            }
        );
        let err = toml::from_str::<MultiDomainSynthetic>("domain_shfit = 0.9").unwrap_err();
        assert!(err.to_string().contains("domain_shfit"), "{err}");
        let cases = [
            (
                MultiDomainSynthetic {
                    domains: 4,
                    ..Default::default()
                },
                "`domain_shares`",
                "one share per domain",
            ),
            (
                MultiDomainSynthetic {
                    domain_shares: vec![0.5, 0.5, 0.5],
                    ..Default::default()
                },
                "`domain_shares`",
                "summing to 1",
            ),
            (
                MultiDomainSynthetic {
                    domain_shift: 1.5,
                    ..Default::default()
                },
                "`domain_shift` = 1.5",
                "[0, 1]",
            ),
            (
                MultiDomainSynthetic {
                    rows: 2,
                    ..Default::default()
                },
                "`rows` = 2",
                "at least `domains` = 3",
            ),
            (
                MultiDomainSynthetic {
                    tasks: 0,
                    ..Default::default()
                },
                "`tasks` = 0",
                "1 to 16",
            ),
            (
                MultiDomainSynthetic {
                    users: 0,
                    ..Default::default()
                },
                "`users` = 0",
                "at least 1",
            ),
        ];
        for (g, setting, allowed) in cases {
            let msg = g.generate().unwrap_err().to_string();
            assert!(msg.contains(setting) && msg.contains(allowed), "{msg}");
        }
    }

    #[test]
    fn exposure_bias_is_off_by_default_and_changes_only_the_logged_labels() {
        let off = small(3000, 4).generate_logged().unwrap();
        assert_eq!(off.unbiased, None);
        assert_eq!(off.data, small(3000, 4).generate().unwrap());
        assert_eq!(off.data.sparse.as_ref().unwrap().fields.len(), 4);

        let on = MultiDomainSynthetic {
            exposure_bias: 2.0,
            ..small(3000, 4)
        }
        .generate_logged()
        .unwrap();
        // The unbiased labels are exactly those generated without the bias,
        // and so is every other column but the added `promoted` field.
        assert_eq!(on.unbiased.as_deref(), Some(&off.data.labels[..]));
        let (a, b) = (on.data.sparse.as_ref().unwrap(), off.data.sparse.as_ref().unwrap());
        assert_eq!(a.fields, ["user_id", "item_id", "item_category", "domain", "promoted"]);
        assert_eq!(a.vocab[4], 3);
        let without: Vec<u32> = a.ids.chunks(5).flat_map(|r| r[..4].to_vec()).collect();
        assert_eq!(without, b.ids);
        assert_eq!(on.data.dense, off.data.dense);
        assert_eq!(on.data.sequences, off.data.sequences);
        assert_eq!(on.data.domains, off.data.domains);
        // A boost only adds positives, and some.
        let logged = &on.data.labels;
        assert!(logged.iter().zip(&off.data.labels).all(|(l, u)| l >= u));
        assert!(logged.iter().sum::<f32>() > off.data.labels.iter().sum::<f32>() + 50.0);

        // The test rows of a split get the unbiased labels, the others keep the logged ones.
        let test = [3usize, 10, 2999];
        let data = on.clone().with_unbiased_rows(&test).unwrap();
        for r in 0..3000 {
            let want = if test.contains(&r) { &off.data.labels } else { logged };
            assert_eq!(data.labels[r * 2..r * 2 + 2], want[r * 2..r * 2 + 2], "row {r}");
        }
        assert!(on.with_unbiased_rows(&[3000]).is_err());
    }

    /// Rows binned by their noise-free logit (10 bins); in each bin the
    /// boosted rows' logged positive rate is that of `sigmoid(logit + bias)`,
    /// while the unbiased labels of boosted and other rows both follow
    /// `sigmoid(logit)`: the unbiased labels do not depend on the flag.
    #[test]
    fn exposure_bias_inflates_the_logged_clicks_of_boosted_rows_as_set() {
        let bias = 1.5;
        let g = MultiDomainSynthetic {
            exposure_bias: bias,
            promoted_items: 0.4,
            promotion_rate: 0.5,
            ..small(40_000, 9)
        };
        let (logged, t) = g.generate_logged_with_truth().unwrap();
        let d = &logged.data;
        let unbiased = logged.unbiased.as_ref().unwrap();
        let ids = &d.sparse.as_ref().unwrap().ids;
        let xs = &d.dense.as_ref().unwrap().values;
        let flags: Vec<u32> = ids.chunks(5).map(|r| r[4]).collect();
        assert!(flags.iter().all(|&f| f == 1 || f == 2));
        let boosted: Vec<bool> = flags.iter().map(|&f| f == 2).collect();
        // About promoted_items * promotion_rate = 0.2 of the rows; the flag
        // varies within a promoted item and never marks another item.
        let share = boosted.iter().filter(|&&b| b).count() as f64 / 40_000.0;
        assert!((share - 0.2).abs() < 0.05, "boosted share {share}");
        let mut per_item = vec![[0usize; 2]; 200];
        for (r, &b) in boosted.iter().enumerate() {
            per_item[ids[r * 5 + 1] as usize - 1][usize::from(b)] += 1;
        }
        let promoted = per_item.iter().filter(|c| c[1] > 0).count();
        assert!((50..=110).contains(&promoted), "{promoted} promoted items");
        for c in per_item.iter().filter(|c| c[1] > 0) {
            let rate = c[1] as f64 / (c[0] + c[1]) as f64;
            assert!((0.2..0.8).contains(&rate), "an item's boosted rows: {c:?}");
        }

        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        for task in 0..2 {
            let mut rows: Vec<(f64, usize)> = (0..d.rows())
                .map(|r| {
                    let (u, i) = (ids[r * 5] as usize - 1, ids[r * 5 + 1] as usize - 1);
                    let x: Vec<f64> = xs[r * 4..r * 4 + 4].iter().map(|&v| f64::from(v)).collect();
                    let p = domain_ids(d)[r] as usize;
                    (t.logit(task, u, i, &x, p), r)
                })
                .collect();
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut lift = 0.0;
            for bin in rows.chunks(4000) {
                // (labels, shift of the logit) for: boosted logged, boosted
                // unbiased, other unbiased, other logged.
                let cases: [(&[f32], bool, f64); 4] = [
                    (&d.labels, true, bias),
                    (unbiased, true, 0.0),
                    (unbiased, false, 0.0),
                    (&d.labels, false, 0.0),
                ];
                let mut observed_rates = [0.0; 4];
                for (c, (labels, flag, shift)) in cases.iter().enumerate() {
                    let sel: Vec<&(f64, usize)> = bin.iter().filter(|(_, r)| boosted[*r] == *flag).collect();
                    let n = sel.len() as f64;
                    assert!(n > 300.0, "bin of {n} rows");
                    let expected = sel.iter().map(|(z, _)| sig(z + shift)).sum::<f64>() / n;
                    let observed = sel.iter().map(|(_, r)| f64::from(labels[r * 2 + task])).sum::<f64>() / n;
                    let se = (expected * (1.0 - expected) / n).sqrt();
                    assert!(
                        (observed - expected).abs() < 4.0 * se + 1e-3,
                        "task {task}, case {c}: rate {observed} vs {expected}"
                    );
                    observed_rates[c] = observed;
                }
                lift += observed_rates[0] - observed_rates[1];
            }
            // Not vacuous: the boost lifts the boosted rows' logged click rate
            // (by 0.17 on average for a logit shift of 1.5 at these rates).
            assert!(lift / 10.0 > 0.1, "task {task}: mean lift {}", lift / 10.0);
        }
    }

    #[test]
    fn exposure_settings_out_of_range_are_errors_naming_them() {
        for (g, setting) in [
            (
                MultiDomainSynthetic {
                    exposure_bias: -1.0,
                    ..Default::default()
                },
                "`exposure_bias` = -1",
            ),
            (
                MultiDomainSynthetic {
                    promoted_items: 0.0,
                    ..Default::default()
                },
                "`promoted_items` = 0",
            ),
            (
                MultiDomainSynthetic {
                    promotion_rate: 1.5,
                    ..Default::default()
                },
                "`promotion_rate` = 1.5",
            ),
        ] {
            let msg = g.generate().unwrap_err().to_string();
            assert!(msg.contains(setting), "{msg}");
        }
    }
}
