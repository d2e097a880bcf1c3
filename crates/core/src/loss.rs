//! Numerically stable per-task losses over each task's sample space.
//!
//! `L_k = sum(delta_k * loss_k) / sum(delta_k)` where `delta_k` marks the rows
//! that carry task k's label (e.g. CVR only on clicked rows), as in the PLE
//! paper. A batch with no labelled row for a task contributes 0 (and no
//! gradient) for it.
//!
//! With per-row sample weights `w_i >= 0` (`[data] weight`) the mean is
//! weighted and self-normalised: `L_k = sum(delta_k w l_k) / sum(delta_k w)`.
//! Scaling every weight by a constant changes nothing (census-income's
//! instance weights are in the thousands: dividing by the labelled-row count
//! instead would multiply the learning rate by their mean), weights all 1
//! give the unweighted loss, and a batch whose labelled rows all weigh 0
//! contributes 0 (and no gradient).

use candle_core::Tensor;

use crate::error::Result;
use crate::task::TaskKind;

/// Elementwise `max(x, 0) - x y + log(1 + exp(-|x|))`: finite for any logit.
/// (candle-nn's `binary_cross_entropy_with_logit` takes `log(sigmoid(x))`,
/// which is -inf/NaN for large |x|.)
pub fn bce_with_logits_elementwise(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((logits.relu()? - (logits * labels)?)? + softplus_neg_abs)?)
}

fn masked_mean(per_row: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = (per_row * mask)?.sum_all()?;
    let den = mask.sum_all()?.maximum(1.0)?;
    Ok(num.div(&den)?)
}

/// Mean stable BCE over the masked-in rows. All arguments are `[B]`.
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    masked_mean(&bce_with_logits_elementwise(logits, labels)?, mask)
}

/// Mean squared error over the masked-in rows. All arguments are `[B]`.
pub fn mse(preds: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    masked_mean(&(preds - labels)?.sqr()?, mask)
}

/// The loss of a task of the given kind.
pub fn task_loss(kind: TaskKind, outputs: &Tensor, labels: &Tensor, mask: &Tensor) -> Result<Tensor> {
    match kind {
        TaskKind::Binary => bce_with_logits(outputs, labels, mask),
        TaskKind::Regression => mse(outputs, labels, mask),
    }
}

/// [`task_loss`] with each row weighed by `weights` (`[B]`, finite, >= 0)
/// when given: `sum_i m_i w_i l_i / sum_i m_i w_i`, 0 when that sum is 0.
pub fn weighted_task_loss(
    kind: TaskKind,
    outputs: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(w) = weights else {
        return task_loss(kind, outputs, labels, mask);
    };
    let per_row = match kind {
        TaskKind::Binary => bce_with_logits_elementwise(outputs, labels)?,
        TaskKind::Regression => (outputs - labels)?.sqr()?,
    };
    let mw = (mask * w)?;
    let num = (per_row * &mw)?.sum_all()?;
    // A zero sum has a zero numerator: the smallest normal f32 keeps 0 / 0 at 0.
    let den = mw.sum_all()?.maximum(f32::MIN_POSITIVE)?;
    Ok(num.div(&den)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn bce_matches_textbook_for_moderate_logits() {
        let x = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let y = [0.0f32, 1.0, 1.0, 0.0, 1.0];
        let got: Vec<f32> = bce_with_logits_elementwise(&t(&x), &t(&y)).unwrap().to_vec1().unwrap();
        for ((xi, yi), g) in x.iter().zip(&y).zip(&got) {
            let p = 1.0 / (1.0 + (-xi).exp());
            let textbook = -(yi * p.ln() + (1.0 - yi) * (1.0 - p).ln());
            assert!((g - textbook).abs() < 1e-5, "x={xi} y={yi}: {g} vs {textbook}");
        }
    }

    #[test]
    fn bce_finite_at_extreme_logits() {
        let x = t(&[-100.0, 100.0, -100.0, 100.0]);
        let y = t(&[0.0, 1.0, 1.0, 0.0]);
        let got: Vec<f32> = bce_with_logits_elementwise(&x, &y).unwrap().to_vec1().unwrap();
        assert!(got.iter().all(|v| v.is_finite()), "{got:?}");
        assert!(got[0].abs() < 1e-6 && got[1].abs() < 1e-6);
        assert!((got[2] - 100.0).abs() < 1e-3 && (got[3] - 100.0).abs() < 1e-3);
        // And the gradient is finite too.
        let v = candle_core::Var::new(&[-100.0f32, 100.0], &Device::Cpu).unwrap();
        let l = bce_with_logits(v.as_tensor(), &t(&[1.0, 0.0]), &t(&[1.0, 1.0])).unwrap();
        let g = l.backward().unwrap();
        let g: Vec<f32> = g.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        assert!((g[0] + 0.5).abs() < 1e-5 && (g[1] - 0.5).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn mask_restricts_the_sample_space() {
        // Only rows 0 and 2 count: ((1-3)^2 + (2-2)^2) / 2 = 2.
        let l = mse(&t(&[1.0, 100.0, 2.0]), &t(&[3.0, 0.0, 2.0]), &t(&[1.0, 0.0, 1.0]))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l - 2.0).abs() < 1e-6, "{l}");
        // No labelled row: zero loss, not NaN.
        let l = bce_with_logits(&t(&[1.0]), &t(&[1.0]), &t(&[0.0]))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(l, 0.0);
    }

    #[test]
    fn weights_scale_each_rows_loss_and_normalise_by_their_sum() {
        // MSE, rows (pred, label, mask, weight): (1, 3, 1, 2), (100, 0, 0, 5),
        // (2, 2, 1, 1), (0, 1, 1, 0.5): (2*4 + 1*0 + 0.5*1) / (2 + 1 + 0.5) = 8.5 / 3.5.
        let (p, y, m, w) = (
            t(&[1.0, 100.0, 2.0, 0.0]),
            t(&[3.0, 0.0, 2.0, 1.0]),
            t(&[1.0, 0.0, 1.0, 1.0]),
            t(&[2.0, 5.0, 1.0, 0.5]),
        );
        let l = weighted_task_loss(TaskKind::Regression, &p, &y, &m, Some(&w))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((f64::from(l) - 8.5 / 3.5).abs() < 1e-6, "{l}");
        // Scale-free: weights x 1000 give the same loss.
        let w1000 = (&w * 1000.0).unwrap();
        let l2 = weighted_task_loss(TaskKind::Regression, &p, &y, &m, Some(&w1000))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l - l2).abs() < 1e-6, "{l} vs {l2}");
        // Weights all 1: the unweighted loss.
        let ones = t(&[1.0; 4]);
        let a = weighted_task_loss(TaskKind::Binary, &p, &t(&[1.0, 0.0, 0.0, 1.0]), &m, Some(&ones))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = task_loss(TaskKind::Binary, &p, &t(&[1.0, 0.0, 0.0, 1.0]), &m)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // BCE: logits (0, 2), labels (1, 0), weights (3, 1):
        // (3 ln 2 + (2 + ln(1 + e^-2))) / 4.
        let want = (3.0 * 2f64.ln() + 2.0 + (1.0 + (-2f64).exp()).ln()) / 4.0;
        let got = weighted_task_loss(
            TaskKind::Binary,
            &t(&[0.0, 2.0]),
            &t(&[1.0, 0.0]),
            &t(&[1.0, 1.0]),
            Some(&t(&[3.0, 1.0])),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
        // Every labelled row weighs 0: zero loss and a zero gradient, not NaN.
        let v = candle_core::Var::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let l = weighted_task_loss(
            TaskKind::Binary,
            v.as_tensor(),
            &t(&[1.0, 0.0]),
            &t(&[1.0, 1.0]),
            Some(&t(&[0.0, 0.0])),
        )
        .unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
        let g: Vec<f32> = l.backward().unwrap().get(v.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![0.0, 0.0]);
    }
}
