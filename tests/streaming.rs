//! Streamed (out-of-core) training: it learns while holding a bounded number
//! of rows, its evaluation equals the in-memory one, it resumes exactly, a
//! single file is split by hash, and bad settings are config errors.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::Device;
use mtrec_core::Model;
use mtrec_data::{Part, StreamedData};
use mtrec_runner::config::{parse, LoadedConfig};
use mtrec_runner::run::{eval_file, expand, load_trained, predict_file, run_with, RunOptions};
use mtrec_runner::source::{prepare, Rows};
use mtrec_train::{evaluate, evaluate_batches, predict, train_on, Checkpointer, Streamed, TrainOptions};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A synthetic rule task: `click` is 1 when the user's group effect plus an
/// age term plus noise is positive; `spend` is a noisy linear function.
fn write_rule_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,city,age,click,spend\n");
    let mut x = seed;
    for _ in 0..rows {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let user = (x >> 33) % 40;
        let city = ["paris", "lyon", "nice"][((x >> 40) % 3) as usize];
        let age = 18 + (x >> 45) % 60;
        let noise = ((x >> 20) % 100) as f64 / 250.0 - 0.2;
        let effect = [0.8, -0.4, -0.4][(user % 3) as usize];
        let score = effect + (age as f64 - 48.0) / 40.0 + noise;
        let _ = writeln!(
            s,
            "u{user},{city},{age},{},{:.3}",
            u8::from(score > 0.0),
            2.0 * score + 1.0
        );
    }
    std::fs::write(path, s).unwrap();
}

const CONFIG: &str = r#"
[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user", "city"]
dense = ["age"]
streaming = true
chunk_rows = 256
shuffle_buffer = 512

[model]
arch = "mmoe"
experts = 4
expert_units = [16]
tower_units = [8]

[train]
epochs = 3
batch_size = 64
eval_batch_size = 100
lr = 0.01
patience = 0

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }

[[tasks]]
name = "spend"
kind = "regression"
label = { column = "spend" }
"#;

fn config(dir: &Path, text: &str, sets: &[&str]) -> LoadedConfig {
    mtrec_runner::link_builtin_plugins();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut cfg = parse(text, &dir.join("config.toml"), &sets).unwrap();
    cfg.data_dir = Some(dir.to_path_buf());
    cfg
}

fn write_files(dir: &Path, train_rows: usize) {
    write_rule_csv(&dir.join("train.csv"), train_rows, 1);
    write_rule_csv(&dir.join("valid.csv"), 1000, 2);
    write_rule_csv(&dir.join("test.csv"), 1000, 3);
}

/// The config's model, built for its (streamed) data.
fn model_for(cfg: &LoadedConfig, data: &mtrec_runner::source::Prepared, seed: u64) -> Model {
    let (graph, _) = expand(cfg, data).unwrap();
    Model::build(&graph, &data.features, &data.tasks, 0, seed, &Device::Cpu).unwrap()
}

fn streamed(p: &mtrec_runner::source::Prepared) -> &StreamedData {
    match &p.rows {
        Rows::Streamed(s) => s,
        Rows::Memory { .. } => panic!("`streaming = true` must give streamed rows"),
    }
}

fn weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    m.params()
        .all()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// 20,000 training rows, 24 times what may be held at once (256 chunk +
/// 512 buffer + 64 batch): the model learns the rule, and the most rows
/// ever held stays within the bound over all epochs and evaluations.
#[test]
fn streamed_training_learns_with_bounded_memory() {
    let dir = temp("learns");
    write_files(&dir, 20_000);
    let cfg = config(&dir, CONFIG, &[]);
    let prepared = prepare(&cfg, None).unwrap();
    let data = streamed(&prepared);
    let model = model_for(&cfg, &prepared, 1);
    let source = Streamed::new(data);
    let outcome = train_on(&model, &source, &cfg.config.train, TrainOptions::default(), |_| {}).unwrap();
    assert_eq!(outcome.history.len(), 3);
    assert_eq!(source.rows_read(), Some(20_000), "every training row once per epoch");
    let test = evaluate_batches(&model, data.batches(Part::Test, 100, None), None).unwrap();
    let auc = test.tasks[0].metrics.auc.unwrap();
    assert!(auc > 0.85, "the model should learn the rule: test AUC {auc}");
    let bound = 256 + 512 + 64;
    assert!(data.peak_rows() <= bound, "peak {} rows > {bound}", data.peak_rows());
    assert!(
        data.peak_rows() >= 512,
        "the shuffle buffer filled: {}",
        data.peak_rows()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A streamed run's report, `mtrec eval` (streamed) and the evaluation of
/// the test file loaded whole agree exactly (same model, same batches);
/// `mtrec predict` (streamed, written incrementally) writes the in-memory
/// predictions.
#[test]
fn streamed_evaluation_and_prediction_equal_in_memory() {
    let dir = temp("equal");
    write_files(&dir, 3000);
    let cfg = config(&dir, CONFIG, &["train.epochs=2"]);
    let out = dir.join("run");
    let result = run_with(
        &cfg,
        RunOptions {
            out: Some(out.clone()),
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    let report = &result.report;
    assert_eq!(
        (report.rows.train, report.rows.valid, report.rows.test),
        (3000, 1000, 1000)
    );
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(resolved.contains("streaming = true") && resolved.contains("train_eval_rows = 100000"));

    let test_path = dir.join("test.csv");
    let streamed_eval = eval_file(&out, &test_path).unwrap();
    let trained = load_trained(&out).unwrap();
    let whole = trained.preprocessor.load_file(&test_path).unwrap();
    let rows: Vec<usize> = (0..whole.rows()).collect();
    let in_memory = evaluate(&trained.models[0], &whole, &rows, 100).unwrap();
    assert_eq!(streamed_eval, in_memory, "streamed eval = in-memory eval, exactly");
    assert_eq!(report.test, in_memory, "the run's streamed test metrics = in-memory");
    assert!(in_memory.tasks[0].metrics.auc.unwrap() > 0.8);

    let scores = dir.join("scores.csv");
    assert_eq!(predict_file(&out, &test_path, &scores).unwrap(), 1000);
    let outputs = predict(&trained.models[0], &whole, &rows, 100).unwrap();
    let mut expected = String::from("click,spend\n");
    for (click, spend) in outputs[0].iter().zip(&outputs[1]) {
        let p = 1.0 / (1.0 + (-click).exp());
        let _ = writeln!(expected, "{p:.7},{spend}");
    }
    assert_eq!(std::fs::read_to_string(&scores).unwrap(), expected);
    // A failed prediction leaves no output and no temporary file behind.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "user,city,age\nu1,paris,old\n").unwrap();
    let err = predict_file(&out, &bad, &dir.join("bad-scores.csv"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.csv: line 2, column `age`"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bad-scores"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A group column (GAUC) and a weight column flow through streamed
/// training, the run's report and `mtrec eval`; streamed metrics equal the
/// in-memory ones, GAUC included.
#[test]
fn groups_and_weights_stream_like_in_memory() {
    let dir = temp("gauc");
    write_files(&dir, 2000);
    let cfg = config(
        &dir,
        CONFIG,
        &["train.epochs=1", "data.group=\"user\"", "data.weight=\"age\""],
    );
    let out = dir.join("run");
    let options = RunOptions {
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    let result = run_with(&cfg, options, |_| {}).unwrap();
    let test_path = dir.join("test.csv");
    let streamed_eval = eval_file(&out, &test_path).unwrap();
    let trained = load_trained(&out).unwrap();
    let [model] = trained.models.as_slice() else {
        panic!("a multi-task run holds one model, got {}", trained.models.len())
    };
    let whole = trained.preprocessor.load_file(&test_path).unwrap();
    assert!(whole.groups.is_some() && whole.weights.is_some());
    let rows: Vec<usize> = (0..whole.rows()).collect();
    let in_memory = evaluate(model, &whole, &rows, 100).unwrap();
    assert_eq!(
        streamed_eval, in_memory,
        "streamed eval = in-memory eval, GAUC included"
    );
    assert_eq!(result.report.test, in_memory);
    let click = &in_memory.tasks[0].metrics;
    // Every test row is labelled for `click`: GAUC over the model's outputs.
    let scores = &predict(model, &whole, &rows, 100).unwrap()[0];
    let labels: Vec<f32> = (0..whole.rows()).map(|r| whole.labels[r * 2]).collect();
    let by_hand = mtrec_train::metrics::gauc(scores, &labels, whole.groups.as_ref().unwrap()).unwrap();
    assert_eq!(
        (click.gauc, click.gauc_groups),
        (by_hand.map(|g| g.0), by_hand.map(|g| g.1))
    );
    assert!(
        click.gauc.unwrap() > 0.5 && click.gauc_groups.unwrap() <= 40,
        "{click:?}"
    );
    assert_eq!(in_memory.tasks[1].metrics.gauc, None, "no GAUC for a regression task");
    let table = result.report.metrics_table();
    assert!(table.lines().next().unwrap().ends_with("gauc"), "{table}");
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(json.contains("\"gauc\"") && json.contains("\"gauc_groups\""));
    std::fs::remove_dir_all(&dir).ok();
}

/// Streamed training resumed from its epoch-2 checkpoint ends with the
/// weights of an uninterrupted run: the shuffle is seeded by (seed, epoch).
#[test]
fn streamed_resume_equals_uninterrupted() {
    let dir = temp("resume");
    write_files(&dir, 1500);
    let cfg = config(&dir, CONFIG, &[]);
    let prepared = prepare(&cfg, None).unwrap();
    let data = streamed(&prepared);
    let opts = |ckpt: &Path, resume| TrainOptions {
        checkpoint: Some(Checkpointer::new(ckpt)),
        resume,
        ..TrainOptions::default()
    };
    let train = &cfg.config.train;
    let a = model_for(&cfg, &prepared, 1);
    train_on(&a, &Streamed::new(data), train, opts(&dir.join("a"), false), |_| {}).unwrap();
    let b = model_for(&cfg, &prepared, 1);
    let two = mtrec_train::TrainConfig {
        epochs: 2,
        ..train.clone()
    };
    train_on(&b, &Streamed::new(data), &two, opts(&dir.join("b"), false), |_| {}).unwrap();
    let c = model_for(&cfg, &prepared, 7);
    let resumed = train_on(&c, &Streamed::new(data), train, opts(&dir.join("b"), true), |_| {}).unwrap();
    assert_eq!(resumed.history.len(), 3);
    assert_eq!(weights(&a), weights(&c));
    std::fs::remove_dir_all(&dir).ok();
}

/// One `path` with streaming: a seeded hash split of its rows; the parts
/// cover the file and the preprocessor is fitted on the train part.
#[test]
fn single_file_streams_with_a_hash_split() {
    let dir = temp("single");
    write_rule_csv(&dir.join("all.csv"), 4000, 5);
    let text = CONFIG.replace(
        "train = \"train.csv\"\nvalid = \"valid.csv\"\ntest = \"test.csv\"",
        "path = \"all.csv\"\nsplit = [0.7, 0.15, 0.15]",
    );
    let cfg = config(&dir, &text, &["train.epochs=1"]);
    let result = run_with(&cfg, RunOptions::default(), |_| {}).unwrap();
    let rows = &result.report.rows;
    assert_eq!(rows.train + rows.valid + rows.test, 4000);
    assert!((rows.train as f64 / 4000.0 - 0.7).abs() < 0.05, "{rows:?}");
    assert_eq!(result.preprocessor.unwrap().train_rows, rows.train as u64);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_streaming_settings_are_config_errors() {
    let dir = temp("bad");
    let err = |text: &str| -> String {
        let cfg = config(&dir, text, &[]);
        mtrec_runner::run::run(&cfg, |_| {}).unwrap_err().to_string()
    };
    let msg = err(&CONFIG.replace("chunk_rows = 256", "chunk_rows = 0"));
    assert!(msg.contains("line 10, [data] chunk_rows: must be at least 1"), "{msg}");
    let msg = err(&CONFIG.replace("shuffle_buffer = 512", "shuffle_buffer = 0"));
    assert!(
        msg.contains("line 11, [data] shuffle_buffer: must be at least 1"),
        "{msg}"
    );
    let msg = err(&CONFIG.replace("streaming = true", "streaming = false"));
    assert!(
        msg.contains("[data] chunk_rows: `chunk_rows` applies only to streamed data: add `streaming = true`"),
        "{msg}"
    );
    let msg = err("[data]\nsource = \"mmoe-synthetic\"\nstreaming = true\n\n[model]\narch = \"mmoe\"\n");
    assert!(
        msg.contains("[data] streaming: source `mmoe-synthetic`") && msg.contains("cannot stream"),
        "{msg}"
    );
    let text = CONFIG.replace("chunk_rows = 256", "chunk_rows = -3");
    let msg = parse(&text, &dir.join("config.toml"), &[]).unwrap_err().to_string();
    assert!(msg.contains("line 10") && msg.contains("expected usize"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}
