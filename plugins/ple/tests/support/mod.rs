//! Test helpers shared by PLE's and CGC's tests (CGC's include this file by
//! path: CGC is PLE with one level, and both must learn the same way).
#![allow(clippy::unwrap_used)]

use mtrec_core::Model;
use mtrec_data::Dataset;
use mtrec_train::{train, TrainConfig};

/// Trains `m` on a split of `data` (regression) and checks that it learnt:
/// each task's test MSE well below both the constant predictor's (the train
/// mean) and the untrained model's.
pub fn assert_learns(m: &Model, data: &Dataset) {
    let sp = mtrec_data::split(data.rows(), [0.6, 0.2, 0.2], 1).unwrap();
    let test_mse = |m: &Model| -> Vec<f64> {
        let ev = mtrec_train::evaluate(m, data, &sp.test, 4096).unwrap();
        ev.tasks.iter().map(|t| t.metrics.mse.unwrap()).collect()
    };
    let untrained = test_mse(m);
    let k = data.task_count();
    let label = |r: usize, t: usize| f64::from(data.labels[r * k + t]);
    let constant: Vec<f64> = (0..k)
        .map(|t| {
            let mean = sp.train.iter().map(|&r| label(r, t)).sum::<f64>() / sp.train.len() as f64;
            sp.test.iter().map(|&r| (label(r, t) - mean).powi(2)).sum::<f64>() / sp.test.len() as f64
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 64,
        lr: 3e-3,
        patience: 0,
        ..TrainConfig::default()
    };
    train(m, data, &sp, &cfg, |_| {}).unwrap();
    let trained = test_mse(m);
    eprintln!("test MSE: trained {trained:?}, constant {constant:?}, untrained {untrained:?}");
    for t in 0..k {
        assert!(
            trained[t] < 0.7 * constant[t] && trained[t] < 0.7 * untrained[t],
            "task {t}: trained {trained:?}, constant {constant:?}, untrained {untrained:?}"
        );
    }
}
