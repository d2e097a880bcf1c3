#![allow(clippy::unwrap_used)]
//! Data-parallel training is one process's training: N ranks with batch b
//! train like one process with batch N b (the same losses per step, the
//! same validation metrics), under every loss balancer and with clipping.
//! Ranks are threads here ([`ThreadRank`]: the same exchanges as MPI, in one
//! process); `tests/distributed.rs` at the workspace root runs the `mtrec`
//! binary under `mpirun`.

use std::rc::Rc;

use mtrec_data::{Dataset, MultiDomainSynthetic, Split};
use mtrec_distributed::{install, Collective, ThreadRank};
use mtrec_train::check::small_mmoe;
use mtrec_train::{train_on, BalancerConfig, EpochLog, InMemory, TrainConfig, TrainOptions, TrainParts};

/// Multi-domain data with sparse ids (embedding tables) where the second
/// task is labelled on two rows of three only (per-task sample spaces).
fn data() -> Dataset {
    let d = MultiDomainSynthetic {
        rows: 900,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let k = d.task_count();
    let mut masks = d.masks.clone();
    for r in (0..d.rows()).step_by(3) {
        masks[r * k + 1] = 0.0;
    }
    Dataset::new(d.tasks, d.sparse, d.dense, d.labels, masks, d.domains).unwrap()
}

/// Per step the global batch's losses, and per epoch its log.
type Trace = (Vec<Vec<f64>>, Vec<EpochLog>);

/// [`data`] with per-row sample weights: 0 and small fractions, so that a
/// rank's share of a batch often weighs less than one row.
fn weighted_data() -> Dataset {
    let d = data();
    let w = (0..d.rows()).map(|r| ((r * 7) % 5) as f32 * 0.003).collect();
    d.with_weights(w).unwrap()
}

/// Trains on `train_rows` training rows with `batch` rows per rank, in the
/// calling thread (whose installed collective decides the ranks).
fn run(cfg: &TrainConfig, train_rows: usize) -> Trace {
    run_on(data(), cfg, train_rows)
}

fn run_on(data: Dataset, cfg: &TrainConfig, train_rows: usize) -> Trace {
    let split = Split {
        train: (0..train_rows).collect(),
        valid: (train_rows..train_rows + 200).collect(),
        test: Vec::new(),
    };
    let m = small_mmoe(&data, 4, 3).unwrap();
    let mut steps = Vec::new();
    let mut on_batch = |b: &mtrec_train::BatchProgress| steps.push(b.losses.clone());
    let opts = TrainOptions {
        on_batch: Some(&mut on_batch),
        ..TrainOptions::default()
    };
    let mut logs = Vec::new();
    train_on(&m, &InMemory::new(&data, &split), cfg, opts, |l| logs.push(l.clone())).unwrap();
    (steps, logs)
}

fn on_ranks(ranks: usize, cfg: &TrainConfig, train_rows: usize) -> Vec<Trace> {
    on_ranks_with(ranks, cfg, train_rows, data)
}

fn on_ranks_with(ranks: usize, cfg: &TrainConfig, train_rows: usize, make: fn() -> Dataset) -> Vec<Trace> {
    let cfg = cfg.clone();
    ThreadRank::run(ranks, move |c| {
        let _g = install(Rc::new(c));
        run_on(make(), &cfg, train_rows)
    })
}

fn config(balancer: BalancerConfig, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: batch,
        eval_batch_size: 64,
        lr: 0.01,
        patience: 0,
        clip_norm: Some(0.5),
        conflict_every: 4,
        balancer,
        ..TrainConfig::default()
    }
}

fn assert_same_training(one: &Trace, ranks: &[Trace], what: &str) {
    for (rank, r) in ranks.iter().enumerate() {
        // Every rank reports the global batch's losses: bit-identical.
        assert_eq!(r.0, ranks[0].0, "{what}: rank {rank}'s losses differ from rank 0's");
        assert_eq!(r.0.len(), one.0.len(), "{what}: steps per run");
        for (s, (a, b)) in one.0.iter().zip(&r.0).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 2e-5 * x.abs().max(1.0),
                    "{what}: step {s}: one process {a:?}, rank {rank} {b:?}"
                );
            }
        }
        for (e, (a, b)) in one.1.iter().zip(&r.1).enumerate() {
            for (ta, tb) in a.valid.tasks.iter().zip(&b.valid.tasks) {
                let (x, y) = (ta.metrics.auc.unwrap(), tb.metrics.auc.unwrap());
                assert!((x - y).abs() < 1e-4, "{what}: epoch {e} valid AUC {x} vs {y}");
                assert_eq!(
                    ta.metrics.rows, tb.metrics.rows,
                    "{what}: every validation row counted once"
                );
            }
            assert!(b
                .exchange
                .as_ref()
                .is_some_and(|x| x.dense_bytes_per_step > 0.0 && x.sparse_bytes_per_step > 0.0));
            assert!(a.exchange.is_none());
        }
    }
}

#[test]
fn two_ranks_train_like_one_process_with_twice_the_batch_under_every_balancer() {
    for balancer in [
        BalancerConfig::Fixed,
        BalancerConfig::Uncertainty { init: 0.0 },
        BalancerConfig::Dwa { temperature: 2.0 },
        BalancerConfig::Gradnorm { alpha: 1.5, lr: 0.025 },
        BalancerConfig::Pcgrad,
    ] {
        let name = balancer.name();
        // 500 rows: 7 full global batches of 64 and a short one of 52.
        let one = run(&config(balancer.clone(), 64), 500);
        let two = on_ranks(2, &config(balancer, 32), 500);
        assert_same_training(&one, &two, name);
    }
}

#[test]
fn two_ranks_train_like_one_process_with_sample_weights() {
    for balancer in [BalancerConfig::Fixed, BalancerConfig::Pcgrad] {
        let name = balancer.name();
        let one = run_on(weighted_data(), &config(balancer.clone(), 64), 500);
        let two = on_ranks_with(2, &config(balancer.clone(), 32), 500, weighted_data);
        assert_same_training(&one, &two, name);
        // The weights change the losses (else this would test nothing new).
        let plain = run(&config(balancer, 64), 500);
        assert!(
            (plain.0[0][0] - one.0[0][0]).abs() > 1e-3,
            "{name}: weighted {:?} vs unweighted {:?}",
            one.0[0],
            plain.0[0]
        );
    }
}

#[test]
fn a_short_last_batch_with_fewer_rows_than_ranks_leaves_a_rank_idle() {
    // 3 ranks x 20 = 60 per global batch; 362 rows: the last global batch
    // has 2 rows, so rank 0 has none in that step and still takes part.
    let one = run(&config(BalancerConfig::Fixed, 60), 362);
    let three = on_ranks(3, &config(BalancerConfig::Fixed, 20), 362);
    assert_same_training(&one, &three, "3 ranks");
}

/// The training rows of `ranks` ranks' shards of an epoch, per global batch
/// (read back from a dense feature holding each row's index).
fn shard_rows(data: &Dataset, split: &Split, batch: usize, ranks: usize) -> Vec<Vec<Vec<usize>>> {
    use mtrec_train::TrainSource;
    let cfg = TrainConfig {
        batch_size: batch,
        ..TrainConfig::default()
    };
    let source = InMemory::new(data, split);
    let per_rank: Vec<Vec<Vec<usize>>> = (0..ranks)
        .map(|rank| {
            source
                .epoch_shards(2, &cfg, &candle_core::Device::Cpu, rank, ranks)
                .unwrap()
                .map(|s| match s.unwrap().batch {
                    None => Vec::new(),
                    Some(b) => {
                        let d: Vec<f32> = b.inputs.dense.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                        d.iter().map(|&x| x as usize).collect()
                    }
                })
                .collect()
        })
        .collect();
    // Regrouped: per global batch, per rank.
    let steps = per_rank[0].len();
    assert!(per_rank.iter().all(|r| r.len() == steps), "every rank takes every step");
    (0..steps)
        .map(|s| per_rank.iter().map(|r| r[s].clone()).collect())
        .collect()
}

#[test]
fn sharding_covers_every_row_exactly_once_in_the_one_process_order() {
    let d = data();
    // One dense feature: the row's own index.
    let dense = mtrec_data::DenseColumns {
        names: vec!["row".into()],
        values: (0..d.rows()).map(|r| r as f32).collect(),
    };
    let d = Dataset::new(d.tasks, d.sparse, Some(dense), d.labels, d.masks, d.domains).unwrap();
    let split = Split {
        train: (0..d.rows()).filter(|r| r % 7 != 0).collect(),
        valid: Vec::new(),
        test: Vec::new(),
    };
    let one: Vec<usize> = shard_rows(&d, &split, 60, 1).into_iter().flatten().flatten().collect();
    let mut sorted = one.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, split.train, "one process: every training row once");
    for ranks in [2, 3, 4] {
        let steps = shard_rows(&d, &split, 60 / ranks, ranks);
        // Concatenated in rank order, each global batch is the one
        // process's batch of 60 rows: same rows, same order.
        let joined: Vec<usize> = steps.iter().flatten().flatten().copied().collect();
        assert_eq!(joined, one, "{ranks} ranks");
        for step in &steps[..steps.len() - 1] {
            assert!(
                step.iter().all(|r| r.len() == 60 / ranks),
                "{ranks} ranks: full local batches"
            );
        }
    }
}

#[test]
fn a_rank_whose_data_runs_out_early_is_an_error_naming_it_not_a_hang() {
    let results = ThreadRank::run(2, |c| {
        // Rank 1 has fewer training rows (as another file behind the same path).
        let train_rows = if c.rank() == 0 { 500 } else { 300 };
        let _g = install(Rc::new(c));
        let data = data();
        let split = Split {
            train: (0..train_rows).collect(),
            valid: (600..800).collect(),
            test: Vec::new(),
        };
        let m = small_mmoe(&data, 4, 3).unwrap();
        let cfg = config(BalancerConfig::Fixed, 32);
        train_on(&m, &InMemory::new(&data, &split), &cfg, TrainOptions::default(), |_| {})
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    for r in results {
        let e = r.unwrap_err();
        assert!(
            e.contains("rank 1 has no more training batches while rank 0 has"),
            "{e}"
        );
    }
}

/// Trains on `parts` (every part held, or only the calling rank's), each
/// rank holding all of `data`.
fn run_parts(data: &Dataset, split: &Split, parts: &TrainParts, cfg: &TrainConfig) -> Trace {
    let m = small_mmoe(data, 4, 3).unwrap();
    let mut steps = Vec::new();
    let mut on_batch = |b: &mtrec_train::BatchProgress| steps.push(b.losses.clone());
    let opts = TrainOptions {
        on_batch: Some(&mut on_batch),
        ..TrainOptions::default()
    };
    let mut logs = Vec::new();
    train_on(&m, &InMemory::new(data, split).with_parts(parts), cfg, opts, |l| {
        logs.push(l.clone())
    })
    .unwrap();
    (steps, logs)
}

/// Training rows in two parts of different lengths: part 0 (even rows
/// below 200) has 100 rows, 4 local batches of 32 (the last of 4 rows),
/// part 1 (odd rows below 130) 65 rows, 3 local batches (the last of 1).
fn uneven_split() -> Split {
    Split {
        train: (0..200).filter(|i| i % 2 == 0 || *i < 130).collect(),
        valid: (600..800).collect(),
        test: Vec::new(),
    }
}

#[test]
fn ranks_reading_their_own_parts_train_like_one_process_holding_every_part() {
    let d = data();
    let split = uneven_split();
    let all = TrainParts::striped(&split.train, 2);
    assert_eq!(all.sizes, vec![100, 65]);
    for balancer in [BalancerConfig::Fixed, BalancerConfig::Pcgrad] {
        let name = balancer.name();
        let one = run_parts(&d, &split, &all, &config(balancer.clone(), 64));
        // Four steps per epoch: the last one has rows of part 0 only.
        assert_eq!(one.0.len(), 3 * 4, "{name}");
        let (cfg, split2, all2) = (config(balancer, 32), split.clone(), all.clone());
        let two = ThreadRank::run(2, move |c| {
            let rank = c.rank();
            let _g = install(Rc::new(c));
            let own = TrainParts::own(rank, &all2.rows[rank], all2.sizes.clone());
            run_parts(&data(), &split2, &own, &cfg)
        });
        assert_same_training(&one, &two, name);
    }
}

#[test]
fn parts_give_every_training_row_once_per_epoch_and_another_order_than_one_part() {
    use mtrec_train::TrainSource;
    let d = data();
    // One dense feature: the row's own index.
    let dense = mtrec_data::DenseColumns {
        names: vec!["row".into()],
        values: (0..d.rows()).map(|r| r as f32).collect(),
    };
    let d = Dataset::new(d.tasks, d.sparse, Some(dense), d.labels, d.masks, d.domains).unwrap();
    let split = uneven_split();
    let parts = TrainParts::striped(&split.train, 2);
    let cfg = TrainConfig {
        batch_size: 64,
        ..TrainConfig::default()
    };
    let rows_of = |source: &dyn TrainSource, epoch: usize| -> Vec<Vec<usize>> {
        source
            .epoch_shards(epoch, &cfg, &candle_core::Device::Cpu, 0, 1)
            .unwrap()
            .map(|s| {
                let b = s.unwrap().batch.unwrap();
                let v: Vec<f32> = b.inputs.dense.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                v.iter().map(|&x| x as usize).collect()
            })
            .collect()
    };
    let with_parts = InMemory::new(&d, &split).with_parts(&parts);
    let batches = rows_of(&with_parts, 1);
    // Global batch b: part 0's b-th local batch of 32 rows, then part 1's.
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![64, 64, 33, 4]);
    for (b, rows) in batches.iter().enumerate() {
        let n0 = [32, 32, 32, 4][b];
        assert!(rows[..n0].iter().all(|r| r % 2 == 0), "batch {b}: part 0 first");
        assert!(rows[n0..].iter().all(|r| r % 2 == 1), "batch {b}: then part 1");
    }
    let mut all: Vec<usize> = batches.concat();
    all.sort_unstable();
    assert_eq!(all, split.train, "every training row once");
    assert_ne!(rows_of(&with_parts, 2), batches, "a new order every epoch");
    let plain = InMemory::new(&d, &split);
    assert_ne!(rows_of(&plain, 1), batches, "two parts are not one permutation");
    // One part is the order without parts.
    let one_part = TrainParts::striped(&split.train, 1);
    assert_eq!(
        rows_of(&InMemory::new(&d, &split).with_parts(&one_part), 3),
        rows_of(&plain, 3)
    );
}

#[test]
fn own_rows_evaluated_on_each_rank_give_the_metrics_of_all_rows() {
    let d = data();
    let m = small_mmoe(&d, 4, 3).unwrap();
    let rows: Vec<usize> = (0..301).collect();
    let one = mtrec_train::evaluate(&m, &d, &rows, 64).unwrap();
    let parts = TrainParts::striped(&rows, 2);
    let two = ThreadRank::run(2, move |c| {
        let rank = c.rank();
        let _g = install(Rc::new(c));
        let d = data();
        let m = small_mmoe(&d, 4, 3).unwrap();
        mtrec_train::evaluate_own_rows(&m, &d, &parts.rows[rank], 64, mtrec_train::EvalConfig::default()).unwrap()
    });
    for ev in two {
        for (a, b) in one.tasks.iter().zip(&ev.tasks) {
            assert_eq!(a.metrics.rows, b.metrics.rows, "every row once");
            assert_eq!(a.metrics.auc, b.metrics.auc, "AUC over all rows");
            let (x, y) = (a.metrics.logloss.unwrap(), b.metrics.logloss.unwrap());
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }
}
