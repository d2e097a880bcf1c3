//! Data-parallel training with the sparsity penalty is one process's
//! training: 2 ranks with batch `b` train AdaSparse like one process with
//! batch `2 b` (the same losses per step, the same weights at the end). The
//! penalty is a mean over rows, which the trainer scales like a task's loss
//! (local rows / global rows), so the ranks' penalty gradients sum to the
//! global batch's. Ranks are threads ([`ThreadRank`]).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::rc::Rc;

use candle_core::Device;
use mtrec_core::Model;
use mtrec_data::{Dataset, MultiDomainSynthetic, Split};
use mtrec_distributed::{install, ThreadRank};
use mtrec_train::{train_on, InMemory, TrainConfig, TrainOptions};

fn data() -> Dataset {
    MultiDomainSynthetic {
        rows: 700,
        history: 0,
        seed: 4,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

/// Per step the global batch's losses, and the weights after training.
type Trace = (Vec<Vec<f64>>, BTreeMap<String, Vec<f32>>);

fn run(batch: usize, sparsity_weight: f64) -> Trace {
    mtrec_adasparse::link();
    let d = data();
    let f = d.features(4);
    let env = mtrec_core::GraphEnv {
        input_width: f.width(),
        tasks: d.tasks.clone(),
        domains: 3,
        features: f.clone(),
    };
    let params: toml::Table = toml::from_str(&format!(
        "units = [16, 8]\nsparsity_weight = {sparsity_weight:?}\ntarget_sparsity = 0.6\nsparsity_tolerance = 0.0\nalpha_growth = 0.05"
    ))
    .unwrap();
    let g = mtrec_core::registry::architecture("adasparse")
        .unwrap()
        .expand(&params, &env)
        .unwrap();
    let m = Model::build(&g, &f, &d.tasks, 3, 7, &Device::Cpu).unwrap();
    let split = Split {
        train: (0..500).collect(),
        valid: (500..700).collect(),
        test: Vec::new(),
    };
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: batch,
        eval_batch_size: 64,
        lr: 0.01,
        patience: 0,
        ..TrainConfig::default()
    };
    let mut steps = Vec::new();
    let mut on_batch = |b: &mtrec_train::BatchProgress| steps.push(b.losses.clone());
    let opts = TrainOptions {
        on_batch: Some(&mut on_batch),
        ..TrainOptions::default()
    };
    train_on(&m, &InMemory::new(&d, &split), &cfg, opts, |_| {}).unwrap();
    let weights = m
        .params()
        .all()
        .into_iter()
        .chain(m.params().buffers())
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    (steps, weights)
}

fn max_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(n, x)| x.iter().zip(&b[n]).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn two_ranks_train_adasparse_with_its_penalty_like_one_process_with_twice_the_batch() {
    // 500 rows: 7 global batches of 64 and a short one of 52, two epochs.
    let one = run(64, 1.0);
    let two = ThreadRank::run(2, |c| {
        let _g = install(Rc::new(c));
        run(32, 1.0)
    });
    for (rank, r) in two.iter().enumerate() {
        assert_eq!(r.0.len(), one.0.len(), "rank {rank}: steps");
        for (s, (a, b)) in one.0.iter().zip(&r.0).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 2e-5 * x.abs().max(1.0),
                    "step {s}: one process {a:?}, rank {rank} {b:?}"
                );
            }
        }
        let diff = max_difference(&one.1, &r.1);
        assert!(diff < 1e-4, "rank {rank}: weights differ by up to {diff}");
    }
    // Not vacuous: without the penalty the weights end elsewhere.
    let free = run(64, 0.0);
    let diff = max_difference(&one.1, &free.1);
    assert!(diff > 1e-2, "the penalty changed the weights by only {diff}");
}
