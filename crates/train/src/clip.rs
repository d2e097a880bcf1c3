//! Gradient clipping by global L2 norm, as `torch.nn.utils.clip_grad_norm_`.

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Storage, Tensor, Var};

use crate::error::{Result, TrainError};

/// The L2 norm of all gradients of `vars` taken together (variables without
/// a gradient count as zero; a variable listed twice counts once). Summed
/// in f64. NaN or infinite if a gradient is.
pub fn grad_global_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    let mut seen = HashSet::with_capacity(vars.len());
    let mut sum = 0.0f64;
    for (_, var) in vars {
        if !seen.insert(var.id()) {
            continue;
        }
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += sum_of_squares(g)?;
        }
    }
    Ok(sum.sqrt())
}

/// Scales the gradients of `vars` so that their global L2 norm is at most
/// `max_norm`, and returns the norm *before* clipping.
///
/// As in PyTorch, when the norm exceeds `max_norm` every gradient is
/// multiplied by `max_norm / (norm + 1e-6)` (so the clipped norm is
/// `max_norm` up to that 1e-6); otherwise nothing changes. The scaled
/// gradients replace the old ones in `grads` (the old tensors are not
/// modified, they may be shared). A non-finite norm is returned as is and
/// leaves the gradients unscaled: check it with `is_finite` to skip a step.
/// `max_norm` must be positive (`f64::INFINITY` never clips).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(TrainError::Invalid(format!(
            "clip_grad_norm: max_norm must be positive, got {max_norm}"
        )));
    }
    let norm = grad_global_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        let mut seen = HashSet::with_capacity(vars.len());
        for (_, var) in vars {
            if !seen.insert(var.id()) {
                continue;
            }
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

fn sum_of_squares(t: &Tensor) -> Result<f64> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Some(xs) = data.get(start..end) {
                return Ok(sum_of_squares_f32(xs));
            }
        }
    }
    Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?)
}

/// Eight independent f64 accumulators so that the loop vectorises.
fn sum_of_squares_f32(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            let x = f64::from(x);
            *a += x * x;
        }
    }
    let tail: f64 = rest.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn setup(ga: &[f32], gb: &[f32]) -> (Vec<(String, Var)>, GradStore) {
        let a = Var::zeros(ga.len(), DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(gb.len(), DType::F32, &Device::Cpu).unwrap();
        let mut grads = GradStore::default();
        grads.insert(a.as_tensor(), Tensor::from_slice(ga, ga.len(), &Device::Cpu).unwrap());
        grads.insert(b.as_tensor(), Tensor::from_slice(gb, gb.len(), &Device::Cpu).unwrap());
        (vec![("a".into(), a), ("b".into(), b)], grads)
    }

    fn grad(grads: &GradStore, vars: &[(String, Var)], i: usize) -> Vec<f32> {
        grads.get(vars[i].1.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn global_norm_hand_case() {
        // sqrt(3^2 + 4^2 + 12^2) = sqrt(169) = 13.
        let (vars, grads) = setup(&[3.0, 4.0], &[12.0]);
        assert_eq!(grad_global_norm(&grads, &vars).unwrap(), 13.0);
        // Listed twice, counted once; a variable without gradient is zero.
        let c = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let more = vec![vars[0].clone(), vars[0].clone(), vars[1].clone(), ("c".into(), c)];
        assert_eq!(grad_global_norm(&grads, &more).unwrap(), 13.0);
    }

    #[test]
    fn clips_to_max_norm() {
        let (vars, mut grads) = setup(&[3.0, 4.0], &[12.0]);
        let norm = clip_grad_norm(&mut grads, &vars, 1.3).unwrap();
        assert_eq!(norm, 13.0);
        // Scaled by 1.3 / (13 + 1e-6) ~= 0.1: [0.3, 0.4], [1.2].
        let (a, b) = (grad(&grads, &vars, 0), grad(&grads, &vars, 1));
        for (got, want) in a.iter().chain(&b).zip([0.3f32, 0.4, 1.2]) {
            assert!((got - want).abs() < 1e-6, "{a:?} {b:?}");
        }
        let after = grad_global_norm(&grads, &vars).unwrap();
        assert!((after - 1.3).abs() < 1e-6, "{after}");
    }

    #[test]
    fn small_gradients_unchanged() {
        let (vars, mut grads) = setup(&[3.0, 4.0], &[12.0]);
        let norm = clip_grad_norm(&mut grads, &vars, 13.5).unwrap();
        assert_eq!(norm, 13.0);
        assert_eq!(grad(&grads, &vars, 0), vec![3.0, 4.0]);
        assert_eq!(grad(&grads, &vars, 1), vec![12.0]);
        assert!(clip_grad_norm(&mut grads, &vars, 0.0).is_err());
    }

    #[test]
    fn non_contiguous_and_f64_gradients() {
        let a = Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(2, DType::F64, &Device::Cpu).unwrap();
        let mut grads = GradStore::default();
        let t = Tensor::new(&[[1.0f32, 2.0], [2.0, 4.0]], &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        grads.insert(a.as_tensor(), t);
        grads.insert(b.as_tensor(), Tensor::new(&[4.0f64, 0.0], &Device::Cpu).unwrap());
        let vars = vec![("a".to_string(), a), ("b".to_string(), b)];
        // 1 + 4 + 4 + 16 + 16 = 41.
        let norm = grad_global_norm(&grads, &vars).unwrap();
        assert!((norm - 41f64.sqrt()).abs() < 1e-12);
        clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        let after = grad_global_norm(&grads, &vars).unwrap();
        assert!((after - 1.0).abs() < 1e-6, "{after}");
    }

    #[test]
    fn long_f32_sum_matches_naive() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let naive: f64 = xs.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((sum_of_squares_f32(&xs) - naive).abs() < 1e-9 * naive);
    }
}
