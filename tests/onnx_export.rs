//! `mtrec export --format onnx` checked against ONNX Runtime: tiny models
//! trained for one epoch on real data (census-income MMoE and PLE, the
//! Douban sample's STAR and MMoE with the domain embedded), exported, run by
//! ONNX Runtime on held-out rows; every task's output must equal
//! `Model::forward` in evaluation mode (probabilities for binary tasks)
//! within 1e-5.
//!
//! ONNX Runtime is Python's `onnxruntime`, installed with pip into a venv
//! under the target folder (`target/onnx-venv`; nothing global changes).
//! When it cannot be installed (no python3, no package registry) the tests
//! are skipped with a message, unless `MTREC_REQUIRE_ONNX=1`, which makes
//! that a failure. Without the data folder they are skipped like the other
//! data tests (`MTREC_REQUIRE_DATA=1` makes that a failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::Device;
use mtrec_core::{registry, GraphEnv, Inputs, Model, TaskKind};
use mtrec_data::{split, Labels, MultiDomainSynthetic};
use mtrec_runner::config;
use mtrec_runner::run::{load_trained, run_with, RunOptions, PREPROCESS_FILE};
use mtrec_tests::{data_dir, root};
use serde_json::{json, Map, Value};

/// The largest difference allowed between ONNX Runtime and mtrec.
const TOLERANCE: f32 = 1e-5;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-onnx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A Python with `onnxruntime`, or why there is none.
fn install_onnxruntime() -> Result<PathBuf, String> {
    let venv = target_dir().join("onnx-venv");
    let python = venv.join("bin").join("python");
    let usable = |py: &Path| {
        Command::new(py)
            .args(["-c", "import onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if usable(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", "onnxruntime", "numpy"]),
        "pip install onnxruntime numpy",
    )?;
    if usable(&python) {
        Ok(python)
    } else {
        Err("onnxruntime installed but cannot be imported".into())
    }
}

/// The venv's Python, installed once per test process; `None` (skip, said
/// so) when it cannot be had, a panic with `MTREC_REQUIRE_ONNX=1`.
fn onnxruntime(what: &str) -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(install_onnxruntime) {
        Ok(p) => Some(p.clone()),
        Err(e) if std::env::var("MTREC_REQUIRE_ONNX").is_ok_and(|v| v == "1") => {
            panic!("{what}: ONNX Runtime unavailable and MTREC_REQUIRE_ONNX=1: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED {what}: ONNX Runtime unavailable ({e}); set MTREC_REQUIRE_ONNX=1 to fail instead");
            None
        }
    }
}

/// The first `rows` lines of a gzipped file, written plain to `to`.
fn head_gz(from: &Path, to: &Path, rows: usize) {
    let file = std::fs::File::open(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).unwrap());
    for line in reader.lines().take(rows) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    out.flush().unwrap();
}

/// configs/census-income.toml on the first 3000 / 1000 / 1000 rows of its
/// files, with `model` as its `[model]` section and one epoch.
fn census(name: &str, model: &str) -> Option<(config::LoadedConfig, PathBuf)> {
    let data = data_dir(&format!("census {name} ONNX export"))?;
    let dir = scratch(name);
    let sub = dir.join("census-income");
    std::fs::create_dir_all(&sub).unwrap();
    for (split, rows) in [("train", 3000), ("valid", 1000), ("test", 1000)] {
        head_gz(
            &data.join("census-income").join(format!("{split}.data.gz")),
            &sub.join(format!("{split}.csv")),
            rows,
        );
    }
    let text = std::fs::read_to_string(root().join("configs/census-income.toml")).unwrap();
    let data_part = text.split("\n[model]\n").next().unwrap();
    let text = format!(
        "{}\n{model}\n[train]\nepochs = 1\nbatch_size = 256\nlr = 0.002\nseed = 1\n",
        data_part.replace(".data.gz\"", ".csv\"")
    );
    let path = dir.join("census.toml");
    std::fs::write(&path, text).unwrap();
    let mut cfg = config::load(&path, &[]).unwrap();
    cfg.data_dir = Some(dir.clone());
    Some((cfg, sub.join("test.csv")))
}

/// A shipped Douban config for one epoch, and the sample file it reads.
fn douban(name: &str, config_file: &str) -> Option<(config::LoadedConfig, PathBuf)> {
    let data = data_dir(&format!("douban {name} ONNX export"))?;
    let mut cfg = config::load(&root().join("configs").join(config_file), &["train.epochs=1".into()]).unwrap();
    cfg.data_dir = Some(data.clone());
    Some((cfg, data.join("samples/douban_sample.csv")))
}

fn feed(t: &str, shape: &[usize], data: Vec<Value>) -> Value {
    json!({ "type": t, "shape": shape, "data": data })
}

/// The batch's inputs under the exported graph's input names.
fn feeds(inputs: &Inputs, model_sequences: &[String]) -> Value {
    let mut m = Map::new();
    let ids = |v: Vec<u32>| v.into_iter().map(Value::from).collect::<Vec<_>>();
    if let Some(s) = &inputs.sparse {
        let (b, f) = s.dims2().unwrap();
        let v = s.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        m.insert(mtrec_export::SPARSE.into(), feed("int64", &[b, f], ids(v)));
    }
    if let Some(d) = &inputs.dense {
        let (b, n) = d.dims2().unwrap();
        let v = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let v = v.into_iter().map(Value::from).collect();
        m.insert(mtrec_export::DENSE.into(), feed("float", &[b, n], v));
    }
    if let Some(d) = &inputs.domains {
        let v = d.ids().to_vec();
        m.insert(mtrec_export::DOMAIN.into(), feed("int64", &[v.len()], ids(v)));
    }
    for (q, s) in model_sequences.iter().zip(&inputs.sequences) {
        let (b, l) = s.ids.dims2().unwrap();
        let v = s.ids.flatten_all().unwrap().to_vec1::<u32>().unwrap();
        m.insert(mtrec_export::sequence_ids(q), feed("int64", &[b, l], ids(v)));
        let n = s.lengths.clone();
        m.insert(mtrec_export::sequence_lengths(q), feed("int64", &[b], ids(n)));
    }
    Value::Object(m)
}

/// Trains `cfg` into a run folder, exports it, scores the first rows of
/// `rows_file` with mtrec and with ONNX Runtime; returns the largest
/// difference per task.
fn trained_export_matches(name: &str, cfg: &config::LoadedConfig, rows_file: &Path, python: &Path) -> Vec<f32> {
    let dir = scratch(&format!("{name}-run"));
    let run = dir.join("run");
    let opts = RunOptions {
        out: Some(run.clone()),
        ..RunOptions::default()
    };
    run_with(cfg, opts, |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let t = load_trained(&run).unwrap();
    let [model] = t.models.as_slice() else {
        panic!("{name}: a multi-task run holds one model, got {}", t.models.len())
    };
    let domains = t.preprocessor.domain.as_ref().map_or(0, |d| d.names.len());
    let out = dir.join("onnx");
    mtrec_export::export(model, domains, &run.join(PREPROCESS_FILE), &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("preprocess.json")).unwrap(),
        std::fs::read(run.join(PREPROCESS_FILE)).unwrap(),
        "{name}: the preprocessing is copied as it is"
    );
    let data = t.preprocessor.encode_file(rows_file, Labels::Optional, None).unwrap();
    let rows: Vec<usize> = (0..data.rows().min(1000)).collect();
    let batch = data.batch(&rows, &Device::Cpu).unwrap();
    let diffs = onnxruntime_matches(name, model, &out.join("model.onnx"), &batch.inputs, python, &dir);
    std::fs::remove_dir_all(&dir).ok();
    diffs
}

/// Runs `onnx` with ONNX Runtime on `inputs` and compares every task's
/// output with `model`'s (evaluation mode); returns the largest difference
/// per task.
fn onnxruntime_matches(name: &str, model: &Model, onnx: &Path, inputs: &Inputs, python: &Path, dir: &Path) -> Vec<f32> {
    let expected = model.forward(inputs, false).unwrap();
    let sequences: Vec<String> = model.features().sequences.iter().map(|q| q.name.clone()).collect();
    std::fs::write(dir.join("feeds.json"), feeds(inputs, &sequences).to_string()).unwrap();
    let status = Command::new(python)
        .arg(root().join("tests/onnx_run.py"))
        .arg(onnx)
        .arg(dir.join("feeds.json"))
        .arg(dir.join("out.json"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{name}: onnxruntime failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap()).unwrap();
    let mut diffs = Vec::new();
    for (task, out) in model.tasks().iter().zip(&expected.outputs) {
        let want: Vec<f32> = out.to_vec1().unwrap();
        let want: Vec<f32> = match task.kind {
            TaskKind::Binary => want.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            TaskKind::Regression => want,
        };
        let got: Vec<f32> = got[&task.name]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no output `{}`", task.name))
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), inputs.rows(), "{name}/{}", task.name);
        let max = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!(
            "{name}: task `{}`: {} rows, max |onnxruntime - mtrec| = {max:e}",
            task.name,
            inputs.rows()
        );
        assert!(max <= TOLERANCE, "{name}/{}: max abs difference {max}", task.name);
        diffs.push(max);
    }
    diffs
}

fn check(name: &str, setup: Option<(config::LoadedConfig, PathBuf)>) {
    mtrec_runner::link_builtin_plugins();
    let Some((cfg, rows)) = setup else { return };
    let Some(python) = onnxruntime(name) else { return };
    let diffs = trained_export_matches(name, &cfg, &rows, &python);
    assert_eq!(diffs.len(), cfg.config.tasks.len());
}

#[test]
fn census_mmoe_matches_onnxruntime() {
    check(
        "census-mmoe",
        census(
            "mmoe",
            "[model]\narch = \"mmoe\"\nexperts = 3\nexpert_units = [16]\ntower_units = [8]\n",
        ),
    );
}

#[test]
fn census_ple_matches_onnxruntime() {
    check(
        "census-ple",
        census(
            "ple",
            "[model]\narch = \"ple\"\nlevels = 2\nspecific_experts = 1\nshared_experts = 2\nexpert_units = [16]\ntower_units = [8]\n",
        ),
    );
}

#[test]
fn douban_star_matches_onnxruntime() {
    check("douban-star", douban("star", "douban-star.toml"));
}

#[test]
fn douban_mmoe_with_domain_embedding_matches_onnxruntime() {
    check("douban-mmoe", douban("mmoe", "douban-mmoe.toml"));
}

/// Every built-in architecture (default parameters; SAR-Net reading the
/// `domain` field as its scenario context, with a training-only debias
/// network over `x0`) trained one epoch on multi-domain synthetic data with
/// behaviour sequences (mean-pooled into the input of the architectures
/// that do not attend over them): ONNX Runtime equals `Model::forward`.
#[test]
fn every_builtin_architecture_matches_onnxruntime_on_synthetic_data() {
    mtrec_runner::link_builtin_plugins();
    let Some(python) = onnxruntime("synthetic architectures") else {
        return;
    };
    let data = MultiDomainSynthetic {
        rows: 900,
        history: 6,
        domain_shares: vec![0.5, 0.3, 0.2],
        seed: 5,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap();
    let sp = split(data.rows(), [0.7, 0.1, 0.2], 1).unwrap();
    let domains = data.domains.as_ref().unwrap().names.len();
    let cfg = mtrec_train::TrainConfig {
        epochs: 1,
        batch_size: 64,
        ..mtrec_train::TrainConfig::default()
    };
    let test = data.batch(&sp.test, &Device::Cpu).unwrap();
    let mut seen = 0;
    for arch in mtrec_plugins::BUILTIN.iter().flat_map(|p| p.architectures) {
        let mut params = toml::Table::new();
        if *arch == "sar-net" {
            params.insert("scenario_field".into(), "domain".into());
            params.insert("debias".into(), toml::Value::Array(vec!["x0".into()]));
        }
        let template = registry::architecture(arch).unwrap();
        let mut features = data.features(4);
        features.side = template.side_features(&params).unwrap();
        let env = GraphEnv {
            input_width: features.width(),
            tasks: data.tasks.clone(),
            domains,
            features: features.clone(),
        };
        let graph = template.expand(&params, &env).unwrap();
        let model = Model::build(&graph, &features, &data.tasks, domains, 1, &Device::Cpu).unwrap();
        mtrec_train::train_with(&model, &data, &sp, &cfg, Default::default(), |_| {}).unwrap();
        let dir = scratch(&format!("synthetic-{arch}"));
        let onnx = dir.join("model.onnx");
        std::fs::write(&onnx, mtrec_export::to_bytes(&model, domains).unwrap()).unwrap();
        let diffs = onnxruntime_matches(arch, &model, &onnx, &test.inputs, &python, &dir);
        assert_eq!(diffs.len(), data.tasks.len(), "{arch}");
        std::fs::remove_dir_all(&dir).ok();
        seen += 1;
    }
    assert!(seen >= 11, "only {seen} architectures");
}
