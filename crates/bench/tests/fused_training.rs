//! The fused ops change speed, not results: 20 training steps of each
//! benchmark workload (MMoE, PLE, STAR; the real `train_step` and Adam) give
//! the same per-task losses on the fused path and on candle's plain ops.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use mtrec_bench::data::{self, Shape};
use mtrec_bench::workload::{self, Workload};
use mtrec_train::{optimizer, train_step, TrainConfig};

fn losses(w: Workload, fused: bool) -> Vec<Vec<f64>> {
    mtrec_core::ops::with_fused(fused, || {
        let shape = Shape::census_like(20 * 64, 5);
        let ds = data::dataset(data::generate(&shape).unwrap(), w.uses_domains()).unwrap();
        let model = workload::build(w, &shape, 3).unwrap();
        let cfg = TrainConfig {
            lr: 1e-3,
            batch_size: 64,
            ..TrainConfig::default()
        };
        let mut opt = optimizer(&model, &cfg).unwrap();
        let order: Vec<usize> = (0..ds.rows()).collect();
        ds.batches(&order, 64, &Device::Cpu)
            .map(|b| train_step(&model, &mut opt, &b.unwrap(), &[1.0, 1.0], None).unwrap())
            .collect()
    })
}

fn same_losses(w: Workload) {
    let fused = losses(w, true);
    let plain = losses(w, false);
    assert_eq!(fused.len(), 20);
    for (step, (f, p)) in fused.iter().zip(&plain).enumerate() {
        for (a, b) in f.iter().zip(p) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}: step {step}: fused loss {a} vs plain {b}",
                w.name()
            );
        }
    }
    // Training moved: the losses are not all the same.
    assert!(fused.first() != fused.last(), "{}: the loss never changed", w.name());
}

#[test]
fn mmoe_fused_and_plain_train_alike() {
    same_losses(Workload::Mmoe);
}

#[test]
fn ple_fused_and_plain_train_alike() {
    same_losses(Workload::Ple);
}

#[test]
fn star_fused_and_plain_train_alike() {
    same_losses(Workload::Star);
}
