//! Numerically stable per-task losses over each task's sample space.
//!
//! `L_k = sum(delta_k * loss_k) / sum(delta_k)` where `delta_k` marks the rows
//! that carry task k's label (e.g. CVR only on clicked rows), as in the PLE
//! paper. A batch with no labelled row for a task contributes 0 (and no
//! gradient) for it.

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
}
