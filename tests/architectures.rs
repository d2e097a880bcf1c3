//! Every built-in architecture: registered, trainable (gradients reach every
//! weight), learning, and working at batch size 1.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use mtrec_core::{registry, TaskKind};
use mtrec_data::split;
use mtrec_tests::{build, synthetic};
use mtrec_train::check::unchanged_after_one_step;
use mtrec_train::{evaluate, predict, train, TrainConfig};

/// The built-in architectures that run on data without domains (the
/// multi-domain ones have their own crates' tests).
fn templates() -> Vec<&'static str> {
    mtrec_plugins::architectures(true)
}

#[test]
fn registry_holds_every_builtin() {
    mtrec_runner::link_builtin_plugins();
    let names: Vec<&str> = registry::architectures().unwrap().keys().copied().collect();
    for want in mtrec_plugins::architectures(false).iter().chain(&["graph"]) {
        assert!(names.contains(want), "`{want}` not registered; have {names:?}");
    }
    let kinds = registry::components().unwrap();
    for want in [
        "mlp",
        "mlp-experts",
        "mlp-tower",
        "softmax-gate",
        "concat",
        "sum",
        "product",
        "concat-sum-product",
    ] {
        assert!(kinds.contains_key(want), "component `{want}` not registered");
    }
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    mtrec_runner::link_builtin_plugins();
    let err = registry::architecture("mmeo").err().unwrap().to_string();
    assert!(err.contains("unknown architecture `mmeo`"), "{err}");
    assert!(err.contains("mmoe") && err.contains("shared-bottom"), "{err}");
}

/// After one optimizer step on a real batch, every trainable variable has
/// changed: catches silent gradient cuts (ops without backward, detached
/// paths, unused weights) in every architecture, for both task kinds.
#[test]
fn every_variable_changes_after_one_step() {
    for kind in [TaskKind::Binary, TaskKind::Regression] {
        let data = synthetic(64, kind, 3);
        let rows: Vec<usize> = (0..64).collect();
        let batch = data.batch(&rows, &Device::Cpu).unwrap();
        for arch in templates() {
            let model = build(arch, &data, 1);
            let unchanged = unchanged_after_one_step(&model, &batch).unwrap();
            assert!(
                unchanged.is_empty(),
                "{arch} ({kind:?}): unchanged after one step: {unchanged:?}"
            );
        }
    }
}

#[test]
fn batch_size_one_trains_and_predicts() {
    let data = synthetic(40, TaskKind::Binary, 5);
    let sp = split(40, [0.5, 0.25, 0.25], 1).unwrap();
    for arch in templates() {
        let model = build(arch, &data, 2);
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 1,
            eval_batch_size: 1,
            ..TrainConfig::default()
        };
        let out = train(&model, &data, &sp, &cfg, |_| {}).unwrap();
        assert_eq!(out.history.len(), 1);
        assert!(out.history[0].train_loss.iter().all(|l| l.is_finite()));
        let preds = predict(&model, &data, &sp.test[..1], 1).unwrap();
        assert_eq!(preds.len(), 2);
        assert_eq!(preds[0].len(), 1);
        assert!(preds[0][0].is_finite());
    }
}

/// The models learn: on the paper's synthetic data in binary form, a few
/// epochs take every architecture's test AUC well above chance.
#[test]
fn models_learn_synthetic_tasks() {
    let data = synthetic(3000, TaskKind::Binary, 11);
    let sp = split(3000, [0.8, 0.1, 0.1], 11).unwrap();
    for arch in templates() {
        let model = build(arch, &data, 4);
        let before = evaluate(&model, &data, &sp.test, 1024).unwrap();
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 64,
            lr: 3e-3,
            patience: 0,
            ..TrainConfig::default()
        };
        train(&model, &data, &sp, &cfg, |_| {}).unwrap();
        let after = evaluate(&model, &data, &sp.test, 1024).unwrap();
        for (b, a) in before.tasks.iter().zip(&after.tasks) {
            let (b, a) = (b.metrics.auc.unwrap(), a.metrics.auc.unwrap());
            assert!(
                a > 0.85 && a > b + 0.1,
                "{arch} {}: AUC {b:.3} -> {a:.3}",
                after.tasks[0].task
            );
        }
    }
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    let data = synthetic(600, TaskKind::Regression, 8);
    let sp = split(600, [0.6, 0.2, 0.2], 8).unwrap();
    let model = build("mmoe", &data, 3);
    // A learning rate this high makes validation noisy: the best epoch is
    // rarely the last, and the model must hold the best one's weights.
    let cfg = TrainConfig {
        epochs: 12,
        batch_size: 32,
        lr: 0.05,
        patience: 3,
        ..TrainConfig::default()
    };
    let out = train(&model, &data, &sp, &cfg, |_| {}).unwrap();
    let best = &out.history[out.best_epoch - 1];
    assert!(out.history.iter().all(|h| h.valid_score <= best.valid_score));
    let now = evaluate(&model, &data, &sp.valid, 1024).unwrap();
    assert!(
        (now.score() - best.valid_score).abs() < 1e-9,
        "{} vs {}",
        now.score(),
        best.valid_score
    );
    if out.stopped_early {
        assert_eq!(out.history.len(), out.best_epoch + cfg.patience);
    }
}
