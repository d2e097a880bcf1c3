#![allow(clippy::unwrap_used)]
//! Loss balancers: the hand cases of each method and a small MMoE trained
//! under every balancer.

use candle_core::{Device, Tensor};
use mtrec_core::TaskKind;
use mtrec_data::{split, Dataset, MmoeSynthetic};
use mtrec_train::balance::{dwa_weights, pcgrad_project, uncertainty_loss, GradNormState};
use mtrec_train::check::unchanged_after_one_step_with;
use mtrec_train::{train, BalancerConfig, TrainConfig};
use rand::SeedableRng;

fn all() -> Vec<BalancerConfig> {
    vec![
        BalancerConfig::Fixed,
        BalancerConfig::Uncertainty { init: 0.0 },
        BalancerConfig::Dwa { temperature: 2.0 },
        BalancerConfig::Gradnorm { alpha: 1.5, lr: 0.025 },
        BalancerConfig::Pcgrad,
    ]
}

fn dot(a: &Tensor, b: &Tensor) -> f32 {
    (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn pcgrad_projects_conflicting_gradients_onto_the_normal_plane() {
    let dev = Device::Cpu;
    let g1 = Tensor::new(&[1.0f32, 0.0], &dev).unwrap();
    let g2 = Tensor::new(&[-1.0f32, 1.0], &dev).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let p = pcgrad_project(&[g1.clone(), g2.clone()], &mut rng).unwrap();
    assert!(dot(&g1, &g2) < 0.0);
    assert!(dot(&p[0], &g2).abs() < 1e-6, "{p:?}");
    assert!(dot(&p[1], &g1).abs() < 1e-6, "{p:?}");
    // g1 - (g1.g2)/|g2|^2 g2 = (1,0) + 0.5 (-1, 1) = (0.5, 0.5)
    assert_eq!(p[0].to_vec1::<f32>().unwrap(), vec![0.5, 0.5]);
    // Not conflicting: unchanged.
    let g3 = Tensor::new(&[1.0f32, 2.0], &dev).unwrap();
    let p = pcgrad_project(&[g1.clone(), g3.clone()], &mut rng).unwrap();
    assert_eq!(p[0].to_vec1::<f32>().unwrap(), g1.to_vec1::<f32>().unwrap());
    assert_eq!(p[1].to_vec1::<f32>().unwrap(), g3.to_vec1::<f32>().unwrap());
}

#[test]
fn gradnorm_weights_stay_positive_and_sum_to_k() {
    let mut g = GradNormState::new(3, 1.5, 0.5);
    for step in 0..200 {
        let losses = [1.0 / (1.0 + step as f64), 1.0, 2.0 + (step as f64).sin()];
        let norms = [10.0, 0.01, 1.0 + step as f64];
        g.update(&losses, &norms);
        let sum: f64 = g.weights.iter().sum();
        assert!((sum - 3.0).abs() < 1e-9, "{:?}", g.weights);
        assert!(g.weights.iter().all(|w| *w > 0.0), "{:?}", g.weights);
    }
}

#[test]
fn uncertainty_loss_is_finite_for_extreme_s() {
    let dev = Device::Cpu;
    let losses = Tensor::new(&[0.7f32, 3.0], &dev).unwrap();
    for s in [-50.0f32, -5.0, 0.0, 5.0, 50.0] {
        let s = Tensor::new(&[s, -s], &dev).unwrap();
        let l = uncertainty_loss(&losses, &s).unwrap().to_scalar::<f32>().unwrap();
        assert!(l.is_finite(), "{l}");
    }
    let zero = Tensor::new(&[0.0f32, 0.0], &dev).unwrap();
    let l = uncertainty_loss(&losses, &zero).unwrap().to_scalar::<f32>().unwrap();
    assert!((l - 1.85).abs() < 1e-6, "{l}");
}

#[test]
fn dwa_weights_sum_to_k() {
    let w = dwa_weights(&[0.5, 0.9, 0.2], &[1.0, 1.0, 0.1], 2.0);
    assert!((w.iter().sum::<f64>() - 3.0).abs() < 1e-9);
    // The task whose loss fell least weighs most.
    assert!(w[2] > w[1] && w[1] > w[0], "{w:?}");
    let w = dwa_weights(&[1.0, 1.0], &[1.0, 1.0], 2.0);
    assert_eq!(w, vec![1.0, 1.0]);
}

/// GradNorm's direction (Chen et al. 2018, eq. 2): with equal gradient
/// norms, the task whose loss falls slower (higher `L_k / L_k(0)`) is given
/// more weight; with equal loss ratios, the task with the larger gradient
/// norm is given less (the `G_k = w_k n_k` are pulled to their mean).
#[test]
fn gradnorm_moves_weight_toward_the_slower_task() {
    let mut g = GradNormState::new(2, 1.5, 0.025);
    g.update(&[1.0, 1.0], &[1.0, 1.0]);
    for step in 1..=50 {
        // Task 0 learns fast (its loss halves every 10 steps), task 1 not at all.
        let fast = 0.5f64.powf(step as f64 / 10.0);
        g.update(&[fast, 1.0], &[1.0, 1.0]);
    }
    assert!(g.weights[1] > g.weights[0] + 0.2, "{:?}", g.weights);
    let mut h = GradNormState::new(2, 1.5, 0.025);
    for _ in 0..50 {
        h.update(&[1.0, 1.0], &[4.0, 1.0]);
    }
    assert!(h.weights[0] < h.weights[1] - 0.2, "{:?}", h.weights);
    // The first step sees equal ratios and equal G: the sign step moves nothing
    // toward either task (both get the same push, renormalised away).
    let mut e = GradNormState::new(2, 1.5, 0.025);
    e.update(&[0.3, 5.0], &[2.0, 2.0]);
    assert!((e.weights[0] - e.weights[1]).abs() < 1e-12, "{:?}", e.weights);
}

/// Uncertainty weighting away from s = 0: `d/ds_k [exp(-s_k) L_k / 2 + s_k / 2]
/// = (1 - exp(-s_k) L_k) / 2`, so gradient descent moves `s_k` toward its
/// optimum `log L_k` from either side. At s = (1, 1), L = (0.7, 3.0):
/// (1 - 0.7/e)/2 = 0.371241 > 0 (s_0 falls toward log 0.7 = -0.357) and
/// (1 - 3/e)/2 = -0.051819 < 0 (s_1 rises toward log 3 = 1.0986).
#[test]
fn uncertainty_gradient_points_each_s_toward_log_of_its_loss() {
    let dev = Device::Cpu;
    let losses = Tensor::new(&[0.7f32, 3.0], &dev).unwrap();
    let grad_at = |s: [f32; 2]| -> Vec<f32> {
        let v = candle_core::Var::new(&s, &dev).unwrap();
        let g = uncertainty_loss(&losses, v.as_tensor()).unwrap().backward().unwrap();
        g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
    };
    let g = grad_at([1.0, 1.0]);
    assert!(
        (g[0] - 0.371_241).abs() < 1e-5 && (g[1] + 0.051_819).abs() < 1e-5,
        "{g:?}"
    );
    // At the optimum the gradient vanishes; below it, it is negative.
    let g = grad_at([0.7f32.ln(), 3.0f32.ln()]);
    assert!(g.iter().all(|x| x.abs() < 1e-6), "{g:?}");
    let g = grad_at([-2.0, -2.0]);
    assert!(g.iter().all(|x| *x < 0.0), "{g:?}");
}

/// DWA (Liu et al. 2019): `w_k = K exp(r_k / T) / sum_j exp(r_j / T)`,
/// `r_k = L_k(t-1) / L_k(t-2)`. prev (0.5, 0.9), prev2 (1, 1), T = 2:
/// r/T = (0.25, 0.45), w = 2 (1.2840254, 1.5683122) / 2.8523376 =
/// (0.9003320, 1.0996680). A higher temperature flattens the weights.
#[test]
fn dwa_weights_match_the_hand_computed_case() {
    let w = dwa_weights(&[0.5, 0.9], &[1.0, 1.0], 2.0);
    assert!(
        (w[0] - 0.900_332).abs() < 1e-6 && (w[1] - 1.099_668).abs() < 1e-6,
        "{w:?}"
    );
    let flat = dwa_weights(&[0.5, 0.9], &[1.0, 1.0], 20.0);
    assert!(flat[1] - flat[0] < w[1] - w[0] && flat[1] > flat[0], "{flat:?}");
}

#[test]
fn balancer_config_parses_and_rejects_unknown_keys() {
    #[derive(serde::Deserialize)]
    struct T {
        train: TrainConfig,
    }
    let t: T = toml::from_str("[train]\nbalancer = { kind = \"dwa\" }\n").unwrap();
    assert_eq!(t.train.balancer, BalancerConfig::Dwa { temperature: 2.0 });
    let t: T = toml::from_str("[train]\nbalancer = { kind = \"pcgrad\" }\nconflict_every = 0\n").unwrap();
    assert_eq!(t.train.balancer, BalancerConfig::Pcgrad);
    assert!(toml::from_str::<T>("[train]\nbalancer = { kind = \"dwa\", temprature = 2 }\n").is_err());
    assert!(toml::from_str::<T>("[train]\nbalancer = { kind = \"gradnrom\" }\n").is_err());
    let default: T = toml::from_str("[train]\n").unwrap();
    assert_eq!(default.train.balancer, BalancerConfig::Fixed);
}

fn mmoe(data: &Dataset, seed: u64) -> mtrec_core::Model {
    mtrec_mmoe::link();
    let features = data.features(4);
    let env = mtrec_core::GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: 0,
        features: features.clone(),
    };
    let mut params = toml::Table::new();
    params.insert("experts".into(), toml::Value::Integer(3));
    let graph = mtrec_core::registry::architecture("mmoe")
        .and_then(|a| a.expand(&params, &env))
        .unwrap();
    mtrec_core::Model::build(&graph, &features, &data.tasks, 0, seed, &Device::Cpu).unwrap()
}

fn data(rows: usize) -> Dataset {
    MmoeSynthetic {
        rows,
        dim: 12,
        correlation: 0.5,
        kind: TaskKind::Regression,
        seed: 3,
        ..MmoeSynthetic::default()
    }
    .generate()
    .unwrap()
}

#[test]
fn every_variable_changes_after_one_step_under_each_balancer() {
    let d = data(64);
    let rows: Vec<usize> = (0..64).collect();
    let batch = d.batch(&rows, &Device::Cpu).unwrap();
    for b in all() {
        let model = mmoe(&d, 1);
        let unchanged = unchanged_after_one_step_with(&model, &batch, &b).unwrap();
        assert!(unchanged.is_empty(), "{b:?}: unchanged {unchanged:?}");
    }
}

#[test]
fn each_balancer_trains_a_small_mmoe() {
    let d = data(1200);
    let sp = split(d.rows(), [0.8, 0.1, 0.1], 1).unwrap();
    for b in all() {
        let model = mmoe(&d, 1);
        let cfg = TrainConfig {
            epochs: 4,
            batch_size: 64,
            lr: 0.005,
            patience: 0,
            conflict_every: 5,
            balancer: b.clone(),
            ..TrainConfig::default()
        };
        let out = train(&model, &d, &sp, &cfg, |_| {}).unwrap();
        let first = &out.history[0].train_loss;
        let last = &out.history[3].train_loss;
        for k in 0..2 {
            assert!(
                last[k].is_finite() && last[k] < first[k],
                "{b:?}: {first:?} -> {last:?}"
            );
        }
        let w = &out.history[3].task_weights;
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|w| w.is_finite() && *w > 0.0), "{b:?}: {w:?}");
        if matches!(b, BalancerConfig::Dwa { .. } | BalancerConfig::Gradnorm { .. }) {
            assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-6, "{b:?}: {w:?}");
        }
        assert_eq!(out.conflict.len(), 1, "{b:?}");
        let c = &out.conflict[0];
        assert!(c.samples > 0 && c.mean_cosine.abs() <= 1.0 + 1e-9 && (0.0..=1.0).contains(&c.negative_share));
    }
}
