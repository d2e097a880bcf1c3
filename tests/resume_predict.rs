//! A run survives being killed (resume gives the uninterrupted result), and a
//! trained model scores new files exactly as it was evaluated.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mtrec_core::{Model, TaskKind};
use mtrec_data::split;
use mtrec_runner::config::parse;
use mtrec_runner::run::{eval_file, load_trained, predict_file, run_with, RunOptions};
use mtrec_tests::{build, synthetic, write_csv};
use mtrec_train::{auc, train_with, BalancerConfig, Checkpointer, TrainConfig, TrainOptions};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Training options that checkpoint into `dir` (and resume from it).
fn checkpointed(dir: &Path, resume: bool) -> TrainOptions<'static> {
    TrainOptions {
        checkpoint: Some(Checkpointer::new(dir)),
        resume,
        ..TrainOptions::default()
    }
}

fn weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    m.params()
        .all()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// What [`straight_and_resumed`] hands back: the weights and outcome of the
/// uninterrupted run, those of the resumed one, and how many epochs the
/// resumed run reported.
type Pair = (
    Vec<(String, Vec<f32>)>,
    mtrec_train::TrainOutcome,
    Vec<(String, Vec<f32>)>,
    mtrec_train::TrainOutcome,
    usize,
);

/// Trains `cfg.epochs` (6) epochs straight; versus 3 epochs (the process
/// "killed" after its third checkpoint), then a fresh process (other
/// initial weights) resuming to the end.
fn straight_and_resumed(arch: &str, data: &mtrec_data::Dataset, cfg: &TrainConfig, name: &str) -> Pair {
    let sp = split(data.rows(), [0.6, 0.2, 0.2], 2).unwrap();
    let opts = checkpointed;
    let dir_a = temp(&format!("resume-{name}-a"));
    let a = build(arch, data, 1);
    let full = train_with(&a, data, &sp, cfg, opts(&dir_a, false), |_| {}).unwrap();
    let dir_b = temp(&format!("resume-{name}-b"));
    let killed = TrainConfig {
        epochs: 3,
        ..cfg.clone()
    };
    train_with(&build(arch, data, 1), data, &sp, &killed, opts(&dir_b, false), |_| {}).unwrap();
    let c = build(arch, data, 99);
    let mut replayed = 0;
    let resumed = train_with(&c, data, &sp, cfg, opts(&dir_b, true), |_| replayed += 1).unwrap();
    std::fs::remove_dir_all(&dir_a).ok();
    std::fs::remove_dir_all(&dir_b).ok();
    (weights(&a), full, weights(&c), resumed, replayed)
}

fn six_epochs(balancer: BalancerConfig) -> TrainConfig {
    TrainConfig {
        epochs: 6,
        batch_size: 32,
        patience: 0,
        balancer,
        ..TrainConfig::default()
    }
}

/// A resumed run ends with identical weights, bit for bit, and identical history.
#[test]
fn resumed_run_equals_uninterrupted_run() {
    let data = synthetic(500, TaskKind::Binary, 21);
    let (a, full, c, resumed, replayed) =
        straight_and_resumed("ple", &data, &six_epochs(BalancerConfig::Fixed), "fixed");
    assert_eq!(
        replayed, 6,
        "the resumed run reports the 3 saved epochs then 3 new ones"
    );
    assert_eq!(a, c);
    assert_eq!(full.best_epoch, resumed.best_epoch);
    let scores = |o: &mtrec_train::TrainOutcome| o.history.iter().map(|h| h.valid_score).collect::<Vec<_>>();
    assert_eq!(scores(&full), scores(&resumed));
}

/// Embedding tables with row-sparse optimizer state (users, items, a
/// behaviour sequence sharing the item table): a killed run resumes to the
/// uninterrupted run's weights and tables, bit for bit, under every table
/// optimizer.
#[test]
fn resume_with_sparse_optimizer_state_is_bit_identical() {
    use mtrec_train::TableOptimizerConfig;
    let data = mtrec_data::MultiDomainSynthetic {
        rows: 600,
        users: 300,
        items: 300,
        ..Default::default()
    }
    .generate()
    .unwrap();
    let kinds = [
        TableOptimizerConfig::default(),
        TableOptimizerConfig::RowwiseAdagrad {
            lr: None,
            eps: 1e-8,
            weight_decay: 1e-4,
        },
        TableOptimizerConfig::Sgd {
            lr: None,
            weight_decay: 0.0,
        },
    ];
    for kind in kinds {
        let cfg = TrainConfig {
            embedding_optimizer: kind.clone(),
            ..six_epochs(BalancerConfig::Fixed)
        };
        let (a, full, c, resumed, _) = straight_and_resumed("mmoe", &data, &cfg, kind.name());
        assert!(
            a.iter().any(|(n, _)| n.starts_with("features.embedding")),
            "the model has embedding tables"
        );
        assert_eq!(a, c, "{}", kind.name());
        let losses = |o: &mtrec_train::TrainOutcome| o.history.iter().map(|h| h.train_loss.clone()).collect::<Vec<_>>();
        assert_eq!(losses(&full), losses(&resumed), "{}", kind.name());
    }
}

/// The same under a balancer with learned state: its weights (in the
/// history), the losses and the model weights match bit for bit.
fn resume_matches_with(balancer: BalancerConfig, name: &str) {
    let data = synthetic(400, TaskKind::Binary, 5);
    let (a, full, c, resumed, _) = straight_and_resumed("mmoe", &data, &six_epochs(balancer), name);
    let task_weights =
        |o: &mtrec_train::TrainOutcome| o.history.iter().map(|h| h.task_weights.clone()).collect::<Vec<_>>();
    let losses = |o: &mtrec_train::TrainOutcome| o.history.iter().map(|h| h.train_loss.clone()).collect::<Vec<_>>();
    // The learned weights move, or this test could not see a lost state.
    let w = task_weights(&full);
    assert!(w.first() != w.last(), "{name}: balancer weights did not move: {w:?}");
    assert_eq!(task_weights(&full), task_weights(&resumed), "{name}");
    assert_eq!(losses(&full), losses(&resumed), "{name}");
    assert_eq!(a, c, "{name}");
}

#[test]
fn resume_continues_uncertainty_weighting_exactly() {
    resume_matches_with(BalancerConfig::Uncertainty { init: 0.0 }, "uncertainty");
}

#[test]
fn resume_continues_gradnorm_exactly() {
    resume_matches_with(BalancerConfig::Gradnorm { alpha: 1.5, lr: 0.025 }, "gradnorm");
}

#[test]
fn resume_continues_dwa_exactly() {
    resume_matches_with(BalancerConfig::Dwa { temperature: 2.0 }, "dwa");
}

#[test]
fn resume_refuses_another_balancer_or_a_damaged_balancer_state() {
    let data = synthetic(200, TaskKind::Binary, 3);
    let sp = split(200, [0.6, 0.2, 0.2], 2).unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        balancer: BalancerConfig::Uncertainty { init: 0.0 },
        ..TrainConfig::default()
    };
    let dir = temp("resume-balancer");
    let opts = |resume| checkpointed(&dir, resume);
    train_with(&build("mmoe", &data, 1), &data, &sp, &cfg, opts(false), |_| {}).unwrap();
    let other = TrainConfig {
        epochs: 2,
        balancer: BalancerConfig::Gradnorm { alpha: 1.5, lr: 0.025 },
        ..cfg.clone()
    };
    let err = train_with(&build("mmoe", &data, 1), &data, &sp, &other, opts(true), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("`uncertainty`") && err.contains("`gradnorm`"), "{err}");
    // The learned state lost: a strict error naming the file, not a silent restart.
    std::fs::remove_file(dir.join("epoch-0001.balancer.safetensors")).unwrap();
    let again = TrainConfig { epochs: 2, ..cfg };
    let err = train_with(&build("mmoe", &data, 1), &data, &sp, &again, opts(true), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("balancer.safetensors") && err.contains("uncertainty"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_refuses_a_checkpoint_of_another_model() {
    let data = synthetic(200, TaskKind::Binary, 3);
    let sp = split(200, [0.6, 0.2, 0.2], 2).unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let dir = temp("resume-other");
    let a = build("ple", &data, 1);
    let opts = |resume| checkpointed(&dir, resume);
    train_with(&a, &data, &sp, &cfg, opts(false), |_| {}).unwrap();
    // An MMoE cannot continue a PLE's checkpoint.
    let m = build("mmoe", &data, 1);
    let err = train_with(&m, &data, &sp, &cfg, opts(true), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint") && err.contains("does not have"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs config `text` on the files of folder `data` into run folder `out`.
fn run_csv(text: &str, data: &Path, out: &Path) -> mtrec_runner::run::RunResult {
    let mut cfg = parse(text, &data.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(data.to_path_buf());
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        ..RunOptions::default()
    };
    run_with(&cfg, opts, |_| {}).unwrap()
}

const CSV_CONFIG: &str = r#"
[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user", "city"]
dense = ["age"]

[model]
arch = "mmoe"
experts = 4

[train]
epochs = 3
batch_size = 32

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }

[[tasks]]
name = "spend"
kind = "regression"
label = { column = "spend" }
"#;

/// Train on CSV files, then `predict` on the test file reproduces the run's
/// test AUC and MSE, and `eval` prints the same metrics; unseen categories
/// in a new file are scored (out-of-vocabulary), not rejected.
#[test]
fn predict_on_the_test_file_reproduces_the_evaluation() {
    mtrec_runner::link_builtin_plugins();
    let data = temp("csv-data");
    write_csv(&data.join("train.csv"), 600, 1, false);
    write_csv(&data.join("valid.csv"), 200, 2, false);
    write_csv(&data.join("test.csv"), 200, 3, false);
    let out = temp("csv-run");
    let result = run_csv(CSV_CONFIG, &data, &out);
    let test_auc = result.report.test.tasks[0].metrics.auc.unwrap();
    let test_mse = result.report.test.tasks[1].metrics.mse.unwrap();
    assert!(test_auc > 0.7, "the model should learn: AUC {test_auc}");
    assert!(out.join("preprocess.json").exists());

    let scores = out.join("scores.csv");
    let n = predict_file(&out, &data.join("test.csv"), &scores).unwrap();
    assert_eq!(n, 200);
    let text = std::fs::read_to_string(&scores).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("click,spend"));
    let rows: Vec<Vec<f32>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r[0])));
    let test_text = std::fs::read_to_string(data.join("test.csv")).unwrap();
    let labels: Vec<(f32, f32)> = test_text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[3].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect();
    let probs: Vec<f32> = rows.iter().map(|r| r[0]).collect();
    let clicks: Vec<f32> = labels.iter().map(|l| l.0).collect();
    let got_auc = auc(&probs, &clicks, None).unwrap();
    assert!(
        (got_auc - test_auc).abs() < 1e-6,
        "predict AUC {got_auc} vs eval {test_auc}"
    );
    let got_mse = rows
        .iter()
        .zip(&labels)
        .map(|(r, l)| ((r[1] - l.1) as f64).powi(2))
        .sum::<f64>()
        / 200.0;
    assert!(
        (got_mse - test_mse).abs() < 1e-4,
        "predict MSE {got_mse} vs eval {test_mse}"
    );

    let ev = eval_file(&out, &data.join("test.csv")).unwrap();
    assert!((ev.tasks[0].metrics.auc.unwrap() - test_auc).abs() < 1e-9);

    // New users at prediction time: scored through the out-of-vocabulary id.
    write_csv(&data.join("new.csv"), 50, 9, true);
    predict_file(&out, &data.join("new.csv"), &out.join("new-scores.csv")).unwrap();
    // And a trained model reloads with the same graph and weights.
    let trained = load_trained(&out).unwrap();
    assert_eq!(trained.parameter_count(), result.report.parameters);
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn missing_data_folder_gives_the_fix() {
    mtrec_runner::link_builtin_plugins();
    let cfg = parse(CSV_CONFIG, Path::new("/nonexistent/config.toml"), &[]).unwrap();
    let err = mtrec_runner::run::run(&cfg, |_| {}).unwrap_err().to_string();
    assert!(err.contains("train.csv"), "{err}");
    if std::env::var_os("MTREC_DATA_DIR").is_none() {
        assert!(err.contains("--data-dir") && err.contains("MTREC_DATA_DIR"), "{err}");
    }
}

#[test]
fn generated_source_rejects_tasks_tables() {
    mtrec_runner::link_builtin_plugins();
    let text = "[data]\nsource = \"mmoe-synthetic\"\nrows = 100\n\n[model]\narch = \"mmoe\"\n\n[[tasks]]\nname = \"x\"\nkind = \"binary\"\nlabel = { column = \"y\" }\n";
    let cfg = parse(text, Path::new("gen.toml"), &[]).unwrap();
    let err = mtrec_runner::run::run(&cfg, |_| {}).unwrap_err().to_string();
    assert!(err.contains("defines its own tasks"), "{err}");
}

/// A CSV with a behaviour log (`hist`, sharing `item`'s vocabulary, and the
/// scenario of each behaviour in `hist_scn`), a domain column `scn` and a
/// position (debias) column: a click is likelier for even items and for users
/// whose log holds even items.
fn write_sequence_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,item,hist,hist_scn,scn,pos,click\n");
    let mut x = seed;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    for _ in 0..rows {
        let user = next(30);
        let n = next(5) as usize; // 0 to 4 behaviours (0: an empty log)
        let hist: Vec<String> = (0..n).map(|_| format!("i{}", next(12))).collect();
        let scns: Vec<&str> = (0..n).map(|_| ["a", "b"][next(2) as usize]).collect();
        let item_id = next(12);
        let item = format!("i{item_id}");
        let even_log = hist
            .iter()
            .filter(|h| h.trim_start_matches('i').parse::<u64>().unwrap() % 2 == 0)
            .count();
        let pos = next(5);
        let score = 1 + 4 * u64::from(item_id % 2 == 0) + even_log as u64 + u64::from(pos == 0);
        let click = u8::from(next(10) < score);
        let scn = ["a", "b"][next(2) as usize];
        let _ = writeln!(
            s,
            "u{user},{item},{},{},{scn},{pos},{click}",
            hist.join("|"),
            scns.join("|")
        );
    }
    std::fs::write(path, s).unwrap();
}

/// Sequences, side (debias) features and the domain embedding go through the
/// whole path: a CSV run, then `predict` on the test file reproduces the
/// run's test AUC (same sequences, same input, bias networks dropped).
#[test]
fn sequences_and_domains_reach_the_predict_path() {
    mtrec_runner::link_builtin_plugins();
    let data = temp("seq-data");
    write_sequence_csv(&data.join("train.csv"), 800, 1);
    write_sequence_csv(&data.join("valid.csv"), 200, 2);
    write_sequence_csv(&data.join("test.csv"), 200, 3);
    let schema = r#"
[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user", "item"]
dense = ["pos"]
sequence = [
  { name = "hist", separator = "|", max_len = 4, share_with = "item" },
  { name = "hist_scn", separator = "|", max_len = 4, pooling = "sum" },
]
domain = "scn"

[train]
epochs = 8
batch_size = 32
lr = 0.01

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }
"#;
    let models = [
        "[model]\narch = \"sar-net\"\nbehaviour_items = \"hist\"\nbehaviour_scenarios = \"hist_scn\"\ntarget_item = \"item\"\ndebias = [\"pos\"]\n",
        "[features]\ndomain_as_feature = true\n\n[model]\narch = \"mmoe\"\nexperts = 2\n",
    ];
    for (k, model) in models.iter().enumerate() {
        let out = temp(&format!("seq-run-{k}"));
        let result = run_csv(&format!("{model}{schema}"), &data, &out);
        let test_auc = result.report.test.tasks[0].metrics.auc.unwrap();
        assert!(test_auc > 0.6, "{model}: the model should learn: AUC {test_auc}");
        let scores = out.join("scores.csv");
        predict_file(&out, &data.join("test.csv"), &scores).unwrap();
        let probs: Vec<f32> = std::fs::read_to_string(&scores)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.parse().unwrap())
            .collect();
        let clicks: Vec<f32> = std::fs::read_to_string(data.join("test.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
            .collect();
        let got = auc(&probs, &clicks, None).unwrap();
        assert!(
            (got - test_auc).abs() < 1e-6,
            "{model}: predict AUC {got} vs eval {test_auc}"
        );
        std::fs::remove_dir_all(&out).ok();
    }
    std::fs::remove_dir_all(&data).ok();
}

/// Runs `text` (with `--set`s) on the files of `data` into `out`, warm
/// started from `from`.
fn warm_run(data: &Path, out: &Path, from: &Path, grow: bool, sets: &[&str]) -> mtrec_runner::Result<()> {
    warm_run_with(data, out, from, (grow, false), sets)
}

/// [`warm_run`] with `(grow_vocabularies, optimizer)`.
fn warm_run_with(
    data: &Path,
    out: &Path,
    from: &Path,
    (grow, optimizer): (bool, bool),
    sets: &[&str],
) -> mtrec_runner::Result<()> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut cfg = parse(CSV_CONFIG, &data.join("config.toml"), &sets)?;
    cfg.data_dir = Some(data.to_path_buf());
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        init_from: Some(mtrec_runner::run::InitFrom {
            dir: from.to_path_buf(),
            grow_vocabularies: grow,
            optimizer,
        }),
        ..RunOptions::default()
    };
    run_with(&cfg, opts, |_| {}).map(|_| ())
}

/// The rows of `feature` in the model's tables.
fn feature_rows(m: &Model, feature: &str) -> Vec<Vec<f32>> {
    let f = m.field_rows().into_iter().find(|f| f.feature == feature).unwrap();
    let table = m.params().tables().into_iter().find(|(n, _)| *n == f.table).unwrap().1;
    let rows: Vec<Vec<f32>> = table.as_tensor().to_vec2().unwrap();
    rows[f.offset..f.offset + f.rows].to_vec()
}

/// `--init-from`: a trained run continued on new files starts from its
/// best weights and its preprocessing (with lr 1e-30 nothing moves, so the new
/// run's weights are the trained ones exactly); `--grow-vocabularies`
/// appends the new files' unseen users after the trained ids, with the
/// trained rows kept and the other fields' rows moved to their new offsets.
#[test]
fn warm_start_continues_a_trained_model_on_new_files() {
    mtrec_runner::link_builtin_plugins();
    let day1 = temp("warm-day1");
    write_csv(&day1.join("train.csv"), 600, 1, false);
    write_csv(&day1.join("valid.csv"), 200, 2, false);
    write_csv(&day1.join("test.csv"), 200, 3, false);
    let trained = temp("warm-trained");
    run_csv(CSV_CONFIG, &day1, &trained);
    let day2 = temp("warm-day2");
    write_csv(&day2.join("train.csv"), 600, 4, true);
    write_csv(&day2.join("valid.csv"), 200, 5, true);
    write_csv(&day2.join("test.csv"), 200, 6, true);
    let a = load_trained(&trained).unwrap();

    let kept = temp("warm-kept");
    warm_run(&day2, &kept, &trained, false, &["train.lr=1e-30", "train.epochs=1"]).unwrap();
    let b = load_trained(&kept).unwrap();
    assert_eq!(
        b.preprocessor, a.preprocessor,
        "the trained run's preprocessing, unchanged"
    );
    assert_eq!(weights(&b.models[0]), weights(&a.models[0]));

    let grown = temp("warm-grown");
    warm_run(&day2, &grown, &trained, true, &["train.lr=1e-30", "train.epochs=1"]).unwrap();
    let c = load_trained(&grown).unwrap();
    let users = |p: &mtrec_data::Preprocessor| -> Vec<String> {
        match &p.sparse[0].encoding {
            mtrec_data::preprocess::Encoding::Vocab { vocab } => vocab.values().to_vec(),
            other => panic!("{other:?}"),
        }
    };
    let (old, new) = (users(&a.preprocessor), users(&c.preprocessor));
    assert_eq!(new[..old.len()], old[..], "trained ids kept");
    assert_eq!(new[old.len()..], ["new-user".to_string()], "the unseen user appended");
    let (ra, rc) = (feature_rows(&a.models[0], "user"), feature_rows(&c.models[0], "user"));
    assert_eq!(rc.len(), ra.len() + 1);
    assert_eq!(rc[..ra.len()], ra[..]);
    assert_eq!(
        feature_rows(&c.models[0], "city"),
        feature_rows(&a.models[0], "city"),
        "moved, not changed"
    );

    // --init-optimizer: the optimizer continues the trained run's (its step
    // count goes on from there); fresh, it starts from 0.
    let steps = |run: &Path, model: &Model| -> u64 {
        let mut opt = mtrec_train::optimizer(model, &TrainConfig::default()).unwrap();
        let ckpt = mtrec_train::Checkpointer::new(run.join("checkpoint"));
        opt.load(ckpt.last_optimizer().unwrap().unwrap()).unwrap();
        opt.dense().step_count()
    };
    let trained_steps = steps(&trained, &a.models[0]);
    assert!(trained_steps > 0);
    let continued = temp("warm-opt");
    warm_run_with(&day2, &continued, &trained, (false, true), &["train.epochs=1"]).unwrap();
    let one_epoch = steps(&kept, &b.models[0]);
    assert_eq!(steps(&continued, &b.models[0]), trained_steps + one_epoch);
    let err = warm_run_with(&day2, &temp("warm-opt-grow"), &trained, (true, true), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--grow-vocabularies"), "{err}");

    // Another [model] cannot continue this one; nor can generated data.
    let err = warm_run(&day2, &temp("warm-bad"), &trained, false, &["model.experts=2"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot continue") && err.contains("[model] sizes"),
        "{err}"
    );
    let err = warm_run(&day2, &temp("warm-bad2"), &trained, false, &["data.dense=[]"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("trained run's") && err.contains("dense"), "{err}");
    for d in [day1, day2, trained, kept, grown, continued] {
        std::fs::remove_dir_all(d).ok();
    }
}
