//! Evaluation metrics over host slices.
//!
//! Every function takes an optional mask of the same length: rows whose mask
//! is `> 0` count (once; the mask is not a weight), rows with mask `0` (or
//! negative, or NaN) are ignored. Errors ([`TrainError::Metric`]) for length
//! mismatches, no masked-in rows, NaN inputs, labels out of range, and AUC
//! without both classes. Sums are taken in f64.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Probabilities are clamped to `[PROB_EPS, 1 - PROB_EPS]` in [`logloss`].
pub const PROB_EPS: f64 = 1e-7;

fn err<T>(msg: String) -> Result<T> {
    Err(TrainError::Metric(msg))
}

fn check_lengths(metric: &str, xs: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<()> {
    if xs.len() != labels.len() {
        return err(format!(
            "{metric}: {} predictions but {} labels",
            xs.len(),
            labels.len()
        ));
    }
    if let Some(m) = mask {
        if m.len() != xs.len() {
            return err(format!("{metric}: mask has {} rows, predictions {}", m.len(), xs.len()));
        }
    }
    Ok(())
}

/// The masked-in rows: (row index, prediction, label).
fn rows<'a>(xs: &'a [f32], labels: &'a [f32], mask: Option<&'a [f32]>) -> impl Iterator<Item = (usize, f32, f32)> + 'a {
    xs.iter()
        .zip(labels)
        .enumerate()
        .filter(move |(i, _)| match mask {
            None => true,
            Some(m) => m.get(*i).is_some_and(|&w| w > 0.0),
        })
        .map(|(i, (&x, &y))| (i, x, y))
}

fn no_nan(metric: &str, what: &str, i: usize, x: f32) -> Result<()> {
    if x.is_nan() {
        return err(format!("{metric}: {what} at row {i} is NaN"));
    }
    Ok(())
}

/// A label that must be exactly 0 or 1.
fn binary_label(metric: &str, i: usize, y: f32) -> Result<bool> {
    if y == 1.0 {
        Ok(true)
    } else if y == 0.0 {
        Ok(false)
    } else {
        err(format!("{metric}: label at row {i} is {y}, expected 0 or 1"))
    }
}

/// Exact ROC AUC: the probability that a random positive scores higher than
/// a random negative, ties counting one half (Mann–Whitney U with average
/// ranks). O(n log n). Any monotone score works (logits or probabilities);
/// labels must be 0 or 1. Errors if one class is absent among the masked-in
/// rows.
pub fn auc(scores: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<f64> {
    check_lengths("auc", scores, labels, mask)?;
    let mut pairs = Vec::with_capacity(scores.len());
    for (i, s, y) in rows(scores, labels, mask) {
        no_nan("auc", "score", i, s)?;
        // `+ 0.0` folds -0.0 into +0.0, so that the two count as a tie.
        pairs.push((s + 0.0, binary_label("auc", i, y)?));
    }
    if pairs.is_empty() {
        return err("auc: no rows (all masked out)".into());
    }
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    match sorted_auc(&pairs) {
        Some(a) => Ok(a),
        None => {
            let only = if pairs.iter().all(|p| !p.1) {
                "negative"
            } else {
                "positive"
            };
            err(format!("auc: undefined, all {} masked-in rows are {only}", pairs.len()))
        }
    }
}

/// The exact AUC of (score, is positive) pairs sorted by score (`-0.0`
/// folded into `+0.0`); `None` without both classes.
fn sorted_auc(pairs: &[(f32, bool)]) -> Option<f64> {
    // Walk groups of equal scores upwards: every positive of a group beats
    // all negatives below the group and ties with the negatives inside it.
    // `twice` is twice the Mann–Whitney U, an exact integer.
    let (mut negatives_below, mut positives, mut twice) = (0u64, 0u64, 0u128);
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        let pos = group.iter().filter(|(_, y)| *y).count() as u64;
        let neg = group.len() as u64 - pos;
        twice += 2 * u128::from(pos) * u128::from(negatives_below) + u128::from(pos) * u128::from(neg);
        negatives_below += neg;
        positives += pos;
    }
    let negatives = negatives_below;
    (positives > 0 && negatives > 0).then(|| twice as f64 / (2.0 * positives as f64 * negatives as f64))
}

/// GAUC as DIN defines it (Zhou et al., KDD'18, eq. 5): the mean of the
/// per-group AUCs weighted by the groups' row counts,
/// `sum_u n_u AUC_u / sum_u n_u`, over the groups whose rows hold both
/// classes (a group with one class has no AUC and is left out, rows and
/// all). Each `AUC_u` is the exact [`auc`] (ties count one half). `groups`
/// holds one id per row (equal ids = one group). Returns the GAUC and the
/// number of groups counted; `None` when no group has both classes.
pub fn gauc(scores: &[f32], labels: &[f32], groups: &[u64]) -> Result<Option<(f64, usize)>> {
    check_lengths("gauc", scores, labels, None)?;
    if groups.len() != scores.len() {
        return err(format!("gauc: {} group ids for {} rows", groups.len(), scores.len()));
    }
    let mut rows = Vec::with_capacity(scores.len());
    for (i, ((&s, &y), &g)) in scores.iter().zip(labels).zip(groups).enumerate() {
        no_nan("gauc", "score", i, s)?;
        rows.push((g, (s + 0.0, binary_label("gauc", i, y)?)));
    }
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1 .0.total_cmp(&b.1 .0)));
    let (mut sum, mut n, mut counted) = (0.0f64, 0usize, 0usize);
    let mut pairs = Vec::new();
    for group in rows.chunk_by(|a, b| a.0 == b.0) {
        pairs.clear();
        pairs.extend(group.iter().map(|r| r.1));
        if let Some(a) = sorted_auc(&pairs) {
            sum += group.len() as f64 * a;
            n += group.len();
            counted += 1;
        }
    }
    Ok((counted > 0).then(|| (sum / n as f64, counted)))
}

/// Checks `weights`: one per row, each finite and `>= 0` (the data's
/// reader enforces the same, so a failure here is a caller's bug).
fn check_weights(metric: &str, rows: usize, weights: &[f32]) -> Result<()> {
    if weights.len() != rows {
        return err(format!("{metric}: {} weights for {rows} rows", weights.len()));
    }
    if let Some(i) = weights.iter().position(|w| !(w.is_finite() && *w >= 0.0)) {
        return err(format!(
            "{metric}: weight at row {i} is {}, expected finite and >= 0",
            weights[i]
        ));
    }
    Ok(())
}

/// (score with `-0.0` folded into `+0.0`, is positive, weight) of every
/// row, sorted by score: the input of [`sorted_weighted_auc`].
fn weighted_pairs(metric: &str, scores: &[f32], labels: &[f32], weights: &[f32]) -> Result<Vec<(f32, bool, f64)>> {
    check_lengths(metric, scores, labels, None)?;
    check_weights(metric, scores.len(), weights)?;
    let mut pairs = Vec::with_capacity(scores.len());
    for (i, ((&s, &y), &w)) in scores.iter().zip(labels).zip(weights).enumerate() {
        no_nan(metric, "score", i, s)?;
        pairs.push((s + 0.0, binary_label(metric, i, y)?, f64::from(w)));
    }
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    Ok(pairs)
}

/// Weighted ROC AUC: `sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2)
/// / (W+ W-)`, where `W+` / `W-` are the positives' / negatives' weight
/// sums: the AUC of the data with each row repeated `w` times (exactly so
/// for integer weights). O(n log n) by one walk over the tie groups.
/// Undefined (an error, as for [`auc`]) when either class weighs 0, which
/// includes a class without rows. Weights must be finite and `>= 0`.
pub fn weighted_auc(scores: &[f32], labels: &[f32], weights: &[f32]) -> Result<f64> {
    let pairs = weighted_pairs("weighted auc", scores, labels, weights)?;
    if pairs.is_empty() {
        return err("weighted auc: no rows".into());
    }
    sorted_weighted_auc(&pairs).ok_or_else(|| {
        TrainError::Metric(format!(
            "weighted auc: undefined, one class has weight 0 among the {} rows",
            pairs.len()
        ))
    })
}

/// [`sorted_auc`] with weights: the same walk over groups of equal scores,
/// counting weight instead of rows (sums in f64; with all weights 1 every
/// partial sum is an integer below 2^53, so the result equals [`auc`]'s).
fn sorted_weighted_auc(pairs: &[(f32, bool, f64)]) -> Option<f64> {
    let (mut negatives_below, mut positives, mut twice) = (0.0f64, 0.0f64, 0.0f64);
    for group in pairs.chunk_by(|a, b| a.0 == b.0) {
        let (mut pos, mut neg) = (0.0f64, 0.0f64);
        for &(_, y, w) in group {
            if y {
                pos += w;
            } else {
                neg += w;
            }
        }
        twice += 2.0 * pos * negatives_below + pos * neg;
        negatives_below += neg;
        positives += pos;
    }
    let negatives = negatives_below;
    (positives > 0.0 && negatives > 0.0).then(|| twice / (2.0 * positives * negatives))
}

/// Weighted GAUC: `sum_u W_u AUC_u / sum_u W_u` with `AUC_u` the group's
/// [`weighted_auc`] and `W_u` the weight sum of the group's rows (both
/// classes): [`gauc`] with groups weighed by their weight instead of their
/// row count, i.e. the GAUC of the data with each row repeated `w` times.
/// Groups whose weighted AUC is undefined (one class, or one class of
/// weight 0) are left out. Returns the GAUC and the groups counted; `None`
/// when no group counts.
pub fn weighted_gauc(scores: &[f32], labels: &[f32], groups: &[u64], weights: &[f32]) -> Result<Option<(f64, usize)>> {
    const NAME: &str = "weighted gauc";
    check_lengths(NAME, scores, labels, None)?;
    check_weights(NAME, scores.len(), weights)?;
    if groups.len() != scores.len() {
        return err(format!("{NAME}: {} group ids for {} rows", groups.len(), scores.len()));
    }
    let mut rows = Vec::with_capacity(scores.len());
    for (i, (((&s, &y), &g), &w)) in scores.iter().zip(labels).zip(groups).zip(weights).enumerate() {
        no_nan(NAME, "score", i, s)?;
        rows.push((g, (s + 0.0, binary_label(NAME, i, y)?, f64::from(w))));
    }
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1 .0.total_cmp(&b.1 .0)));
    let (mut sum, mut total, mut counted) = (0.0f64, 0.0f64, 0usize);
    let mut pairs = Vec::new();
    for group in rows.chunk_by(|a, b| a.0 == b.0) {
        pairs.clear();
        pairs.extend(group.iter().map(|r| r.1));
        if let Some(a) = sorted_weighted_auc(&pairs) {
            let w: f64 = pairs.iter().map(|p| p.2).sum();
            sum += w * a;
            total += w;
            counted += 1;
        }
    }
    Ok((counted > 0).then(|| (sum / total, counted)))
}

/// Weighted mean binary cross-entropy, `sum w l / sum w`, probabilities
/// clamped as in [`logloss`]. An error when the weights sum to 0.
pub fn weighted_logloss(probs: &[f32], labels: &[f32], weights: &[f32]) -> Result<f64> {
    check_lengths("weighted logloss", probs, labels, None)?;
    check_weights("weighted logloss", probs.len(), weights)?;
    for (i, &p) in probs.iter().enumerate() {
        no_nan("weighted logloss", "probability", i, p)?;
    }
    let rows = probs
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (&p, &y))| (i, f64::from(p), y));
    weighted_logloss_f64(rows, weights)?
        .ok_or_else(|| TrainError::Metric("weighted logloss: the weights sum to 0".into()))
}

/// `sum w l / sum w` of (row, probability, label) rows with `weights[row]`;
/// `None` when the weights sum to 0.
fn weighted_logloss_f64(rows: impl Iterator<Item = (usize, f64, f32)>, weights: &[f32]) -> Result<Option<f64>> {
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (i, p, y) in rows {
        if !(0.0..=1.0).contains(&y) {
            return err(format!("weighted logloss: label at row {i} is {y}, expected [0, 1]"));
        }
        let w = f64::from(weights.get(i).copied().unwrap_or(0.0));
        let p = p.clamp(PROB_EPS, 1.0 - PROB_EPS);
        let y = f64::from(y);
        sum -= w * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
        total += w;
    }
    Ok((total > 0.0).then(|| sum / total))
}

/// Weighted mean squared error, `sum w (p - y)^2 / sum w`; `None` when the
/// weights sum to 0.
fn weighted_mse_opt(preds: &[f32], labels: &[f32], weights: &[f32]) -> Result<Option<f64>> {
    check_lengths("weighted mse", preds, labels, None)?;
    check_weights("weighted mse", preds.len(), weights)?;
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (i, ((&p, &y), &w)) in preds.iter().zip(labels).zip(weights).enumerate() {
        no_nan("weighted mse", "prediction", i, p)?;
        no_nan("weighted mse", "label", i, y)?;
        let d = f64::from(p) - f64::from(y);
        sum += f64::from(w) * d * d;
        total += f64::from(w);
    }
    Ok((total > 0.0).then(|| sum / total))
}

/// Weighted mean squared error, `sum w (p - y)^2 / sum w`. An error when
/// the weights sum to 0.
pub fn weighted_mse(preds: &[f32], labels: &[f32], weights: &[f32]) -> Result<f64> {
    weighted_mse_opt(preds, labels, weights)?
        .ok_or_else(|| TrainError::Metric("weighted mse: the weights sum to 0".into()))
}

/// Mean binary cross-entropy of probabilities `probs` against labels in
/// `[0, 1]` (soft labels allowed), with probabilities clamped to
/// `[1e-7, 1 - 1e-7]` so that the result is finite.
pub fn logloss(probs: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<f64> {
    check_lengths("logloss", probs, labels, mask)?;
    let mut probabilities = Vec::new();
    for (i, p, y) in rows(probs, labels, mask) {
        no_nan("logloss", "probability", i, p)?;
        probabilities.push((i, f64::from(p), y));
    }
    logloss_f64(probabilities.into_iter())
}

fn logloss_f64(rows: impl Iterator<Item = (usize, f64, f32)>) -> Result<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, p, y) in rows {
        if !(0.0..=1.0).contains(&y) {
            return err(format!("logloss: label at row {i} is {y}, expected [0, 1]"));
        }
        let p = p.clamp(PROB_EPS, 1.0 - PROB_EPS);
        let y = f64::from(y);
        sum -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        n += 1;
    }
    if n == 0 {
        return err("logloss: no rows (all masked out)".into());
    }
    Ok(sum / n as f64)
}

/// Mean squared error.
pub fn mse(preds: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<f64> {
    check_lengths("mse", preds, labels, mask)?;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, p, y) in rows(preds, labels, mask) {
        no_nan("mse", "prediction", i, p)?;
        no_nan("mse", "label", i, y)?;
        let d = f64::from(p) - f64::from(y);
        sum += d * d;
        n += 1;
    }
    if n == 0 {
        return err("mse: no rows (all masked out)".into());
    }
    Ok(sum / n as f64)
}

/// Numerically stable logistic function in f64.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The metrics of one task on one evaluation set. `rows` is the number of
/// masked-in rows; a metric that does not apply to the task kind, or is
/// undefined on these rows (no rows; AUC with one class), is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub rows: usize,
    pub auc: Option<f64>,
    pub logloss: Option<f64>,
    pub mse: Option<f64>,
    /// Binary tasks of data with a group column: [`gauc`], and the groups
    /// it averages (those with both classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gauc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gauc_groups: Option<usize>,
    /// Weighted metrics only (`[eval] weighted = true`): the rows' weight
    /// sum, the denominator of the weighted logloss and MSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// A task's headline metric: the one reports, comparisons, plots and early
/// stopping use, decided here once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Headline {
    /// `"auc"` or `"mse"`.
    pub name: &'static str,
    /// `None`: undefined on these rows (one class only, or no rows).
    pub value: Option<f64>,
    pub higher_is_better: bool,
}

impl Headline {
    /// The value as a score where higher is better (AUC, or -MSE).
    pub fn score(&self) -> Option<f64> {
        self.value.map(|v| if self.higher_is_better { v } else { -v })
    }
}

impl TaskMetrics {
    /// AUC for a binary task, MSE for a regression task (a regression
    /// task's metrics hold an MSE and nothing else; an AUC column stays an
    /// AUC column when one class makes it undefined).
    pub fn headline(&self) -> Headline {
        match (self.mse, self.auc, self.logloss) {
            (Some(mse), None, None) => Headline {
                name: "mse",
                value: Some(mse),
                higher_is_better: false,
            },
            (_, auc, _) => Headline {
                name: "auc",
                value: auc,
                higher_is_better: true,
            },
        }
    }

    fn empty(rows: usize) -> Self {
        TaskMetrics {
            rows,
            auc: None,
            logloss: None,
            mse: None,
            gauc: None,
            gauc_groups: None,
            weight: None,
        }
    }

    /// These metrics with the weighted GAUC of the same rows
    /// ([`weighted_gauc`]: groups weighed by their weight sums).
    pub fn with_weighted_gauc(
        mut self,
        scores: &[f32],
        labels: &[f32],
        groups: &[u64],
        weights: &[f32],
    ) -> Result<Self> {
        if let Some((g, n)) = weighted_gauc(scores, labels, groups, weights)? {
            self.gauc = Some(g);
            self.gauc_groups = Some(n);
        }
        Ok(self)
    }

    /// [`TaskMetrics::binary_from_logits`] with one weight per row:
    /// [`weighted_auc`] on the logits and the weighted logloss
    /// `sum w l / sum w`; `weight` is the weight sum. `rows` still counts
    /// the rows (zero-weight ones included). No rows give `rows: 0` and no
    /// metrics; a class of weight 0 gives `auc: None`, a weight sum of 0
    /// `logloss: None` too.
    pub fn binary_from_logits_weighted(logits: &[f32], labels: &[f32], weights: &[f32]) -> Result<Self> {
        const NAME: &str = "weighted binary metrics";
        let pairs = weighted_pairs(NAME, logits, labels, weights)?;
        if pairs.is_empty() {
            return Ok(Self::empty(0));
        }
        let probabilities = logits
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (&s, &y))| (i, sigmoid(f64::from(s)), y));
        Ok(TaskMetrics {
            auc: sorted_weighted_auc(&pairs),
            logloss: weighted_logloss_f64(probabilities, weights)?,
            weight: Some(weights.iter().map(|&w| f64::from(w)).sum()),
            ..Self::empty(pairs.len())
        })
    }

    /// [`TaskMetrics::regression`] with one weight per row: the weighted
    /// MSE `sum w (p - y)^2 / sum w` (`None` when the weights sum to 0).
    pub fn regression_weighted(preds: &[f32], labels: &[f32], weights: &[f32]) -> Result<Self> {
        if preds.is_empty() && labels.is_empty() && weights.is_empty() {
            return Ok(Self::empty(0));
        }
        Ok(TaskMetrics {
            mse: weighted_mse_opt(preds, labels, weights)?,
            weight: Some(weights.iter().map(|&w| f64::from(w)).sum()),
            ..Self::empty(preds.len())
        })
    }

    /// These metrics with the GAUC of the same rows (a binary task's
    /// scores and 0/1 labels, one group id per row).
    pub fn with_gauc(mut self, scores: &[f32], labels: &[f32], groups: &[u64]) -> Result<Self> {
        if let Some((g, n)) = gauc(scores, labels, groups)? {
            self.gauc = Some(g);
            self.gauc_groups = Some(n);
        }
        Ok(self)
    }

    /// A binary task from the model's raw outputs (**logits**): AUC on the
    /// logits (no sigmoid saturation ties), logloss on `sigmoid(logit)`
    /// computed in f64 and clamped as in [`logloss`]. Labels must be 0 or 1.
    /// No masked-in rows give `rows: 0` and no metrics; one class only gives
    /// `auc: None`.
    pub fn binary_from_logits(logits: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<Self> {
        Self::binary(logits, labels, mask, sigmoid)
    }

    /// As [`TaskMetrics::binary_from_logits`], from **probabilities**.
    pub fn binary_from_probs(probs: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<Self> {
        Self::binary(probs, labels, mask, |p| p)
    }

    fn binary(scores: &[f32], labels: &[f32], mask: Option<&[f32]>, to_prob: impl Fn(f64) -> f64) -> Result<Self> {
        const NAME: &str = "binary metrics";
        check_lengths(NAME, scores, labels, mask)?;
        let (mut n, mut positives) = (0usize, 0usize);
        let mut probabilities = Vec::new();
        for (i, s, y) in rows(scores, labels, mask) {
            no_nan(NAME, "prediction", i, s)?;
            positives += usize::from(binary_label(NAME, i, y)?);
            probabilities.push((i, to_prob(f64::from(s)), y));
            n += 1;
        }
        if n == 0 {
            return Ok(Self::empty(0));
        }
        let auc = if positives > 0 && positives < n {
            Some(auc(scores, labels, mask)?)
        } else {
            None
        };
        Ok(TaskMetrics {
            auc,
            logloss: Some(logloss_f64(probabilities.into_iter())?),
            ..Self::empty(n)
        })
    }

    /// A regression task: MSE of the predictions. No masked-in rows give
    /// `rows: 0` and `mse: None`.
    pub fn regression(preds: &[f32], labels: &[f32], mask: Option<&[f32]>) -> Result<Self> {
        check_lengths("mse", preds, labels, mask)?;
        let n = rows(preds, labels, mask).count();
        if n == 0 {
            return Ok(Self::empty(0));
        }
        Ok(TaskMetrics {
            mse: Some(mse(preds, labels, mask)?),
            ..Self::empty(n)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn auc_hand_case_with_ties() {
        // negatives: 0.1, 0.4; positives: 0.35, 0.8, 0.4.
        // pos 0.35: > 0.1 (1), < 0.4 (0)     -> 1
        // pos 0.8 : > 0.1 (1), > 0.4 (1)     -> 2
        // pos 0.4 : > 0.1 (1), = 0.4 (0.5)   -> 1.5
        // 4.5 of 3 * 2 = 6 pairs: AUC = 0.75.
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(auc(&scores, &labels, None).unwrap(), 0.75);
        // Rank form: sorted 0.1(1) 0.35(2) 0.4,0.4(3.5 each) 0.8(5);
        // positive ranks 2 + 3.5 + 5 = 10.5, U = 10.5 - 3*4/2 = 4.5.
    }

    #[test]
    fn gauc_hand_case() {
        // Group 7 (4 rows): negatives 0.1, 0.4; positives 0.4, 0.8:
        //   pos 0.4 beats 0.1, ties 0.4 -> 1.5; pos 0.8 -> 2; AUC = 3.5 / 4.
        // Group 3 (2 rows): positive 0.2 below negative 0.9: AUC 0.
        // Group 5 (3 rows): all negative: no AUC, left out with its rows.
        // Group 9 (1 row): one positive: left out.
        // GAUC = (4 * 0.875 + 2 * 0) / (4 + 2) = 3.5 / 6.
        let scores = [0.1, 0.9, 0.4, 0.3, 0.4, 0.2, 0.8, 0.5, 0.6, 0.7];
        let labels = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let groups = [7, 3, 7, 5, 7, 3, 7, 5, 9, 5];
        let (g, n) = gauc(&scores, &labels, &groups).unwrap().unwrap();
        assert!(close(g, 3.5 / 6.0, 1e-12), "{g}");
        assert_eq!(n, 2);
        // The row order does not matter.
        let rev = |v: &[f32]| v.iter().rev().copied().collect::<Vec<_>>();
        let rg: Vec<u64> = groups.iter().rev().copied().collect();
        let (g2, _) = gauc(&rev(&scores), &rev(&labels), &rg).unwrap().unwrap();
        assert_eq!(g, g2);
        // One group: its AUC.
        let one = [1u64; 10];
        let (g1, n1) = gauc(&scores, &labels, &one).unwrap().unwrap();
        assert_eq!((g1, n1), (auc(&scores, &labels, None).unwrap(), 1));
        // No group with both classes: undefined.
        assert_eq!(gauc(&[0.1, 0.2], &[1.0, 0.0], &[1, 2]).unwrap(), None);
        // Bad input is an error, not a number.
        assert!(gauc(&[0.1, 0.2], &[1.0, 0.5], &[1, 1]).is_err());
        assert!(gauc(&[0.1, 0.2], &[1.0, 0.0], &[1]).is_err());
    }

    #[test]
    fn auc_extremes_and_all_ties() {
        let labels = [0.0, 1.0, 0.0, 1.0];
        assert_eq!(auc(&[0.1, 0.9, 0.2, 0.8], &labels, None).unwrap(), 1.0);
        assert_eq!(auc(&[0.9, 0.1, 0.8, 0.2], &labels, None).unwrap(), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels, None).unwrap(), 0.5);
        // -0.0 and +0.0 are a tie, not an ordering.
        assert_eq!(auc(&[-0.0, 0.0], &[1.0, 0.0], None).unwrap(), 0.5);
        // Infinite scores are fine.
        assert_eq!(
            auc(&[f32::NEG_INFINITY, f32::INFINITY], &[0.0, 1.0], None).unwrap(),
            1.0
        );
    }

    #[test]
    fn auc_matches_brute_force() {
        // Many ties (scores from a small set) and an irregular label pattern.
        let n = 200;
        let scores: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        let labels: Vec<f32> = (0..n)
            .map(|i| if (i * 13 + i / 7) % 5 < 2 { 1.0 } else { 0.0 })
            .collect();
        let mut num = 0.0;
        let mut den = 0.0;
        for i in 0..n {
            for j in 0..n {
                if labels[i] == 1.0 && labels[j] == 0.0 {
                    den += 1.0;
                    if scores[i] > scores[j] {
                        num += 1.0;
                    } else if scores[i] == scores[j] {
                        num += 0.5;
                    }
                }
            }
        }
        let got = auc(&scores, &labels, None).unwrap();
        assert!(close(got, num / den, 1e-12), "{got} vs {}", num / den);
        assert!(got != 0.5);
    }

    #[test]
    fn auc_mask_and_errors() {
        // Masked in: neg 0.1, pos 0.9 -> 1.0. With all rows: pos 0.9 beats
        // neg 0.1 only, pos 0.01 beats nothing: 1 of 4 pairs -> 0.25.
        let scores = [0.1, 0.9, 0.99, 0.01];
        let labels = [0.0, 1.0, 0.0, 1.0];
        let mask = [1.0, 1.0, 0.0, 0.0];
        assert_eq!(auc(&scores, &labels, Some(&mask)).unwrap(), 1.0);
        assert_eq!(auc(&scores, &labels, None).unwrap(), 0.25);
        // Only one class among masked-in rows.
        let e = auc(&scores, &labels, Some(&[0.0, 1.0, 0.0, 1.0])).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
        assert!(auc(&[0.1, 0.2], &[0.0, 0.0], None).is_err());
        // Lengths, empty, NaN, non-binary labels.
        assert!(auc(&[0.1, 0.2], &[0.0], None).is_err());
        assert!(auc(&[0.1, 0.2], &[0.0, 1.0], Some(&[1.0])).is_err());
        assert!(auc(&[0.1, 0.2], &[0.0, 1.0], Some(&[0.0, 0.0])).is_err());
        assert!(auc(&[], &[], None).is_err());
        assert!(auc(&[f32::NAN, 0.2], &[0.0, 1.0], None).is_err());
        assert!(auc(&[0.1, 0.2], &[0.0, 0.5], None).is_err());
        // A NaN in a masked-out row does not matter.
        assert_eq!(
            auc(&[f32::NAN, 0.1, 0.2], &[1.0, 0.0, 1.0], Some(&[0.0, 1.0, 1.0])).unwrap(),
            1.0
        );
    }

    /// Weighted AUC by its definition, O(n^2): every (positive, negative)
    /// pair counts `w_i w_j` (a tie half that); `None` when a class weighs 0.
    fn brute_weighted_auc(s: &[f32], y: &[f32], w: &[f32]) -> Option<f64> {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if y[i] == 1.0 && y[j] == 0.0 {
                    let ww = f64::from(w[i]) * f64::from(w[j]);
                    den += ww;
                    if s[i] > s[j] {
                        num += ww;
                    } else if s[i] == s[j] {
                        num += ww / 2.0;
                    }
                }
            }
        }
        (den > 0.0).then(|| num / den)
    }

    /// Weighted GAUC by its definition: each group's brute-force weighted
    /// AUC, weighed by the group's weight sum, over the groups that have one.
    fn brute_weighted_gauc(s: &[f32], y: &[f32], g: &[u64], w: &[f32]) -> Option<f64> {
        let mut ids: Vec<u64> = g.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let (mut num, mut den) = (0.0, 0.0);
        for id in ids {
            let rows: Vec<usize> = (0..s.len()).filter(|&i| g[i] == id).collect();
            let pick = |v: &[f32]| rows.iter().map(|&i| v[i]).collect::<Vec<_>>();
            if let Some(a) = brute_weighted_auc(&pick(s), &pick(y), &pick(w)) {
                let wu: f64 = rows.iter().map(|&i| f64::from(w[i])).sum();
                num += wu * a;
                den += wu;
            }
        }
        (den > 0.0).then(|| num / den)
    }

    /// Rows repeated `w` times (integer weights).
    fn repeated<T: Copy>(v: &[T], w: &[f32]) -> Vec<T> {
        v.iter()
            .zip(w)
            .flat_map(|(&x, &k)| std::iter::repeat_n(x, k as usize))
            .collect()
    }

    #[test]
    fn weighted_auc_hand_case_with_ties_and_zero_weights() {
        // positives 0.35 (w 1), 0.8 (w 3), 0.4 (w 1.5);
        // negatives 0.1 (w 2), 0.4 (w 0.5), 0.4 (w 0), 0.9 (w 0.25).
        // pos 0.35: beats 0.1 -> 1 * 2 = 2
        // pos 0.8 : beats 0.1, 0.4, 0.4 -> 3 * (2 + 0.5 + 0) = 7.5
        // pos 0.4 : beats 0.1 -> 3, ties 0.4 (w 0.5) -> 1.5 * 0.5 / 2 = 0.375
        // 12.875 of W+ W- = 5.5 * 2.75 = 15.125.
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9];
        let y = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let w = [2.0, 0.5, 1.0, 3.0, 1.5, 0.0, 0.25];
        let got = weighted_auc(&s, &y, &w).unwrap();
        assert!(close(got, 12.875 / 15.125, 1e-15), "{got}");
        assert!(close(got, brute_weighted_auc(&s, &y, &w).unwrap(), 1e-15));
        // A zero-weight row changes nothing: the 0.9 negative weighed 0
        // is as if absent.
        let mut w0 = w;
        w0[6] = 0.0;
        let (s6, y6, w6) = (&s[..6], &y[..6], &w[..6]);
        assert_eq!(weighted_auc(&s, &y, &w0).unwrap(), weighted_auc(s6, y6, w6).unwrap());
        // -0.0 and +0.0 tie.
        assert_eq!(weighted_auc(&[-0.0, 0.0], &[1.0, 0.0], &[2.0, 3.0]).unwrap(), 0.5);
        // One class missing, or weighing 0: undefined, as without weights.
        assert!(weighted_auc(&[0.1, 0.2], &[1.0, 1.0], &[1.0, 1.0]).is_err());
        let e = weighted_auc(&[0.1, 0.2], &[1.0, 0.0], &[0.0, 1.0]).unwrap_err();
        assert!(e.to_string().contains("weight 0"), "{e}");
        let m = TaskMetrics::binary_from_logits_weighted(&[0.1, 0.2], &[1.0, 0.0], &[0.0, 1.0]).unwrap();
        assert_eq!((m.rows, m.auc, m.weight), (2, None, Some(1.0)));
        assert!(m.logloss.is_some());
        // All weights 0: no metric at all, but the rows are still counted.
        let m = TaskMetrics::binary_from_logits_weighted(&[0.1, 0.2], &[1.0, 0.0], &[0.0, 0.0]).unwrap();
        assert_eq!((m.rows, m.auc, m.logloss, m.weight), (2, None, None, Some(0.0)));
        // Bad weights and lengths are errors.
        assert!(weighted_auc(&[0.1, 0.2], &[1.0, 0.0], &[1.0]).is_err());
        assert!(weighted_auc(&[0.1, 0.2], &[1.0, 0.0], &[1.0, -1.0]).is_err());
        assert!(weighted_auc(&[0.1, 0.2], &[1.0, 0.0], &[1.0, f32::NAN]).is_err());
        assert!(weighted_auc(&[0.1, 0.2], &[1.0, 0.0], &[1.0, f32::INFINITY]).is_err());
    }

    /// Irregular scores from a small set (many ties), labels, weights (some
    /// 0, fractional) and groups: every weighted metric equals its O(n^2)
    /// or textbook definition.
    #[test]
    fn weighted_metrics_match_brute_force() {
        let n = 300;
        let s: Vec<f32> = (0..n).map(|i| ((i * 37) % 13) as f32 / 10.0).collect();
        let y: Vec<f32> = (0..n).map(|i| f32::from((i * 13 + i / 7) % 5 < 2)).collect();
        let w: Vec<f32> = (0..n).map(|i| ((i * 7) % 9) as f32 * 0.375).collect();
        let g: Vec<u64> = (0..n).map(|i| ((i * 11) % 17) as u64).collect();
        let got = weighted_auc(&s, &y, &w).unwrap();
        let want = brute_weighted_auc(&s, &y, &w).unwrap();
        assert!(close(got, want, 1e-12), "{got} vs {want}");
        assert!(close(got, weighted_auc(&s, &y, &w).unwrap(), 0.0));
        let (gg, groups) = weighted_gauc(&s, &y, &g, &w).unwrap().unwrap();
        assert!(close(gg, brute_weighted_gauc(&s, &y, &g, &w).unwrap(), 1e-12));
        assert_eq!(groups, 17);
        // logloss and MSE: sum w l / sum w.
        let p: Vec<f32> = s.iter().map(|x| (x + 0.05) / 1.5).collect();
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        let ll: f64 = (0..n)
            .map(|i| {
                let (pi, yi) = (f64::from(p[i]), f64::from(y[i]));
                -f64::from(w[i]) * (yi * pi.ln() + (1.0 - yi) * (1.0 - pi).ln())
            })
            .sum::<f64>()
            / total;
        assert!(close(weighted_logloss(&p, &y, &w).unwrap(), ll, 1e-12));
        let se: f64 = (0..n)
            .map(|i| f64::from(w[i]) * (f64::from(p[i]) - f64::from(y[i])).powi(2))
            .sum::<f64>()
            / total;
        assert!(close(weighted_mse(&p, &y, &w).unwrap(), se, 1e-12));
        // From logits: the AUC is on the logits, the logloss on sigmoid.
        let m = TaskMetrics::binary_from_logits_weighted(&s, &y, &w).unwrap();
        assert_eq!(m.auc, Some(got));
        let probs: Vec<f32> = s.iter().map(|&x| sigmoid(f64::from(x)) as f32).collect();
        assert!(close(
            m.logloss.unwrap(),
            weighted_logloss(&probs, &y, &w).unwrap(),
            1e-6
        ));
        assert_eq!((m.rows, m.weight), (n, Some(total)));
    }

    /// Integer weights are repeated rows: AUC and GAUC bit for bit (every
    /// sum is an exact integer), logloss and MSE to rounding.
    #[test]
    fn integer_weights_equal_repeated_rows() {
        let s = [0.1f32, 0.4, 0.35, 0.8, 0.4, 0.4, 0.9, 0.2, 0.2];
        let y = [0.0f32, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let w = [2.0f32, 1.0, 3.0, 0.0, 1.0, 4.0, 1.0, 2.0, 5.0];
        let g = [1u64, 2, 1, 2, 1, 2, 3, 3, 1];
        let (rs, ry, rg) = (repeated(&s, &w), repeated(&y, &w), repeated(&g, &w));
        assert_eq!(weighted_auc(&s, &y, &w).unwrap(), auc(&rs, &ry, None).unwrap());
        let wg = weighted_gauc(&s, &y, &g, &w).unwrap();
        assert_eq!(wg, gauc(&rs, &ry, &rg).unwrap());
        assert!(wg.is_some());
        let p: Vec<f32> = s.iter().map(|x| x + 0.05).collect();
        let rp = repeated(&p, &w);
        assert!(close(
            weighted_logloss(&p, &y, &w).unwrap(),
            logloss(&rp, &ry, None).unwrap(),
            1e-12
        ));
        assert!(close(
            weighted_mse(&p, &y, &w).unwrap(),
            mse(&rp, &ry, None).unwrap(),
            1e-12
        ));
    }

    /// Weights all 1 give the unweighted metrics exactly (the unweighted
    /// code path is untouched; the weighted one agrees bit for bit).
    #[test]
    fn unit_weights_equal_unweighted_exactly() {
        let n = 500;
        let s: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect();
        let y: Vec<f32> = (0..n).map(|i| f32::from((i * 13 + i / 7) % 5 < 2)).collect();
        let g: Vec<u64> = (0..n).map(|i| ((i * 11) % 31) as u64).collect();
        let ones = vec![1.0f32; n];
        let plain = TaskMetrics::binary_from_logits(&s, &y, None)
            .unwrap()
            .with_gauc(&s, &y, &g)
            .unwrap();
        let weighted = TaskMetrics::binary_from_logits_weighted(&s, &y, &ones)
            .unwrap()
            .with_weighted_gauc(&s, &y, &g, &ones)
            .unwrap();
        assert_eq!(weighted.weight, Some(n as f64));
        assert_eq!(
            TaskMetrics {
                weight: None,
                ..weighted
            },
            plain
        );
        let r = TaskMetrics::regression(&s, &y, None).unwrap();
        let rw = TaskMetrics::regression_weighted(&s, &y, &ones).unwrap();
        assert_eq!(TaskMetrics { weight: None, ..rw }, r);
        assert_eq!(weighted_auc(&s, &y, &ones).unwrap(), auc(&s, &y, None).unwrap());
    }

    #[test]
    fn logloss_textbook_values() {
        // -ln(0.9) = 0.105360516, -ln(1 - 0.2) = 0.223143551
        assert!(close(
            logloss(&[0.9], &[1.0], None).unwrap(),
            0.105_360_515_657_826,
            1e-7
        ));
        assert!(close(
            logloss(&[0.2], &[0.0], None).unwrap(),
            0.223_143_551_314_209_8,
            1e-7
        ));
        // Mean of the two, and p = 0.5 gives ln 2 whatever the label.
        assert!(close(
            logloss(&[0.9, 0.2], &[1.0, 0.0], None).unwrap(),
            (0.105_360_515_657_826 + 0.223_143_551_314_209_8) / 2.0,
            1e-7
        ));
        assert!(close(
            logloss(&[0.5, 0.5], &[1.0, 0.0], None).unwrap(),
            std::f64::consts::LN_2,
            1e-12
        ));
        // Soft label 0.3 at p = 0.5: still ln 2.
        assert!(close(
            logloss(&[0.5], &[0.3], None).unwrap(),
            std::f64::consts::LN_2,
            1e-12
        ));
    }

    #[test]
    fn logloss_clamps() {
        // p = 0 with label 1 and p = 1 with label 0: -ln(1e-7) = 16.118095651.
        let worst = logloss(&[0.0, 1.0], &[1.0, 0.0], None).unwrap();
        assert!(worst.is_finite());
        assert!(close(worst, 16.118_095_650_958_32, 1e-6), "{worst}");
        // Right answers with certainty: -ln(1 - 1e-7) ~ 1e-7.
        let best = logloss(&[1.0, 0.0], &[1.0, 0.0], None).unwrap();
        assert!(best > 0.0 && best < 1.1e-7, "{best}");
    }

    #[test]
    fn logloss_mask_and_errors() {
        let got = logloss(&[0.9, 0.0001], &[1.0, 1.0], Some(&[1.0, 0.0])).unwrap();
        assert!(close(got, 0.105_360_515_657_826, 1e-7));
        assert!(logloss(&[0.9], &[1.0, 0.0], None).is_err());
        assert!(logloss(&[0.9], &[1.0], Some(&[0.0])).is_err());
        assert!(logloss(&[0.9], &[2.0], None).is_err());
        assert!(logloss(&[f32::NAN], &[1.0], None).is_err());
    }

    #[test]
    fn mse_hand_case() {
        // ((1-0)^2 + (2-4)^2 + (3-3)^2) / 3 = 5/3; masking the second: 1/2.
        let p = [1.0, 2.0, 3.0];
        let y = [0.0, 4.0, 3.0];
        assert!(close(mse(&p, &y, None).unwrap(), 5.0 / 3.0, 1e-12));
        assert!(close(mse(&p, &y, Some(&[1.0, 0.0, 1.0])).unwrap(), 0.5, 1e-12));
        assert!(mse(&p, &y[..2], None).is_err());
        assert!(mse(&p, &y, Some(&[0.0; 3])).is_err());
    }

    #[test]
    fn task_metrics_binary_from_logits() {
        // logits 0 -> p 0.5 (loss ln 2 each); ln 9 -> p 0.9 (loss -ln 0.9).
        let logits = [0.0, 9f32.ln(), -2.0, 100.0];
        let labels = [0.0, 1.0, 0.0, 1.0];
        let mask = [1.0, 1.0, 1.0, 0.0];
        let m = TaskMetrics::binary_from_logits(&logits, &labels, Some(&mask)).unwrap();
        assert_eq!(m.rows, 3);
        assert_eq!(m.auc, Some(1.0));
        let p_neg2 = 1.0 / (1.0 + 2f64.exp());
        let want = (std::f64::consts::LN_2 - 0.9f64.ln() - (1.0 - p_neg2).ln()) / 3.0;
        assert!(close(m.logloss.unwrap(), want, 1e-7), "{m:?} {want}");
        assert_eq!(m.mse, None);
        // Huge logits stay finite (clamped).
        let m = TaskMetrics::binary_from_logits(&[-1000.0, 1000.0], &[1.0, 0.0], None).unwrap();
        assert_eq!(m.auc, Some(0.0));
        assert!(close(m.logloss.unwrap(), 16.118_095_650_958_32, 1e-6));
        // One class: no AUC but a logloss; no rows: nothing.
        let m = TaskMetrics::binary_from_logits(&[0.0, 1.0], &[1.0, 1.0], None).unwrap();
        assert_eq!((m.rows, m.auc), (2, None));
        assert!(m.logloss.is_some());
        let m = TaskMetrics::binary_from_logits(&[0.0], &[1.0], Some(&[0.0])).unwrap();
        assert_eq!(m, TaskMetrics::empty(0));
        assert!(TaskMetrics::binary_from_logits(&[0.0], &[0.5], None).is_err());
        assert!(TaskMetrics::binary_from_logits(&[0.0], &[1.0, 0.0], None).is_err());
    }

    #[test]
    fn task_metrics_probs_regression_and_serde() {
        let m = TaskMetrics::binary_from_probs(&[0.9, 0.2], &[1.0, 0.0], None).unwrap();
        assert_eq!(m.auc, Some(1.0));
        assert!(close(
            m.logloss.unwrap(),
            (0.105_360_515_657_826 + 0.223_143_551_314_209_8) / 2.0,
            1e-7
        ));
        let r = TaskMetrics::regression(&[1.0, 2.0, 3.0], &[0.0, 4.0, 3.0], None).unwrap();
        assert_eq!((r.rows, r.auc, r.logloss), (3, None, None));
        assert!(close(r.mse.unwrap(), 5.0 / 3.0, 1e-12));
        let json = serde_json::to_string(&r).unwrap();
        let back: TaskMetrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(json.contains("\"auc\":null"), "{json}");
    }
}
