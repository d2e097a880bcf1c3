//! Weighted metrics end to end: a CSV with a weight column and `[eval]
//! weighted = true` gives a report (printed, report.json, `mtrec eval`)
//! that says it is weighted, and whose figures are the weighted metrics of
//! the model's predictions, checked against their O(n^2) definitions here.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mtrec_runner::config::{parse, LoadedConfig};
use mtrec_runner::run::{eval_file, eval_file_with, load_trained, run_with, RunOptions};
use mtrec_train::{predict, EvalConfig};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-weighted-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `click` from a user effect, age and noise; `spend` a noisy linear
/// function; `w` a weight in {0, 0.5, ..., 4} that favours older users, so
/// that weighted and unweighted figures differ.
fn write_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,city,age,w,click,spend\n");
    let mut x = seed;
    for _ in 0..rows {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let user = (x >> 33) % 40;
        let city = ["paris", "lyon", "nice"][((x >> 40) % 3) as usize];
        let age = 18 + (x >> 45) % 60;
        let noise = ((x >> 20) % 100) as f64 / 120.0 - 0.4;
        let effect = [0.8, -0.4, -0.4][(user % 3) as usize];
        let score = effect + (age as f64 - 48.0) / 40.0 + noise;
        let w = ((x >> 52) % 5 + age / 30) as f64 * 0.5;
        let _ = writeln!(
            s,
            "u{user},{city},{age},{w},{},{:.3}",
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
weight = "w"

[model]
arch = "mmoe"
experts = 2
expert_units = [8]
tower_units = [4]

[train]
epochs = 2
batch_size = 64
eval_batch_size = 100
lr = 0.01
patience = 0

[eval]
weighted = true

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }

[[tasks]]
name = "spend"
kind = "regression"
label = { column = "spend" }
"#;

fn config(dir: &Path, sets: &[&str]) -> LoadedConfig {
    mtrec_runner::link_builtin_plugins();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut cfg = parse(CONFIG, &dir.join("config.toml"), &sets).unwrap();
    cfg.data_dir = Some(dir.to_path_buf());
    cfg
}

/// Weighted AUC by its definition: over every (positive, negative) pair,
/// `w_i w_j` for a win, half that for a tie, divided by `W+ W-`.
fn brute_auc(s: &[f32], y: &[f32], w: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..s.len() {
        for j in 0..s.len() {
            if y[i] == 1.0 && y[j] == 0.0 {
                let ww = f64::from(w[i]) * f64::from(w[j]);
                den += ww;
                if s[i] > s[j] {
                    num += ww;
                } else if s[i] == s[j] {
                    num += ww / 2.0;
                }
            }
        }
    }
    num / den
}

#[test]
fn weighted_run_reports_weighted_metrics_equal_to_their_definitions() {
    let dir = temp("run");
    write_csv(&dir.join("train.csv"), 1500, 1);
    write_csv(&dir.join("valid.csv"), 400, 2);
    write_csv(&dir.join("test.csv"), 400, 3);
    let out = dir.join("run");
    let options = RunOptions {
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    let result = run_with(&config(&dir, &[]), options, |log| assert!(log.valid.weighted)).unwrap();
    let report = &result.report;
    assert!(report.train.weighted && report.valid.weighted && report.test.weighted);
    let table = report.metrics_table();
    assert!(table.lines().next().unwrap().ends_with("(weighted)"), "{table}");
    assert!(report.render().contains("(weighted)"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["test"]["weighted"], serde_json::Value::Bool(true));
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(resolved.contains("[eval]\nweighted = true"), "{resolved}");

    // The test figures from the model's predictions, by definition.
    let trained = load_trained(&out).unwrap();
    let whole = trained.preprocessor.load_file(&dir.join("test.csv")).unwrap();
    let rows: Vec<usize> = (0..whole.rows()).collect();
    let outputs = predict(&trained.models[0], &whole, &rows, 100).unwrap();
    let w = whole.weights.clone().unwrap();
    assert!(w.contains(&0.0) && w.iter().any(|&x| x > 1.0), "zero and large weights");
    let labels = |t: usize| -> Vec<f32> { rows.iter().map(|&r| whole.labels[r * 2 + t]).collect() };
    let (click, spend) = (&report.test.tasks[0].metrics, &report.test.tasks[1].metrics);
    let auc = brute_auc(&outputs[0], &labels(0), &w);
    assert!((click.auc.unwrap() - auc).abs() < 1e-12, "{click:?} vs {auc}");
    let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
    assert_eq!(click.weight, Some(total));
    let logloss: f64 = outputs[0]
        .iter()
        .zip(labels(0))
        .zip(&w)
        .map(|((&z, y), &wi)| {
            let p = (1.0 / (1.0 + (-f64::from(z)).exp())).clamp(1e-7, 1.0 - 1e-7);
            -f64::from(wi) * (f64::from(y) * p.ln() + (1.0 - f64::from(y)) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / total;
    assert!((click.logloss.unwrap() - logloss).abs() < 1e-9);
    let mse: f64 = outputs[1]
        .iter()
        .zip(labels(1))
        .zip(&w)
        .map(|((&p, y), &wi)| f64::from(wi) * (f64::from(p) - f64::from(y)).powi(2))
        .sum::<f64>()
        / total;
    assert!((spend.mse.unwrap() - mse).abs() < 1e-9 * mse.max(1.0));

    // `mtrec eval` of the run folder: streamed, weighted as the run was.
    let again = eval_file(&out, &dir.join("test.csv")).unwrap();
    assert_eq!(again, report.test);

    // `mtrec eval --weighted false` of the weighted run: unweighted figures.
    let off = eval_file_with(&out, &dir.join("test.csv"), Some(EvalConfig { weighted: false })).unwrap();
    assert!(!off.weighted);
    assert_eq!(
        off.tasks[0].metrics.auc,
        Some(mtrec_train::auc(&outputs[0], &labels(0), None).unwrap())
    );

    // A run without a weight column cannot be evaluated weighted.
    let text = CONFIG
        .replace("weight = \"w\"\n", "ignore = [\"w\"]\n")
        .replace("[eval]\nweighted = true\n", "");
    mtrec_runner::link_builtin_plugins();
    let mut cfg = parse(&text, &dir.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(dir.clone());
    let bare = dir.join("bare");
    let options = RunOptions {
        out: Some(bare.clone()),
        ..RunOptions::default()
    };
    run_with(&cfg, options, |_| {}).unwrap();
    let e = eval_file_with(&bare, &dir.join("test.csv"), Some(EvalConfig { weighted: true }));
    let e = e.unwrap_err().to_string();
    assert!(
        e.contains("without a weight column") && e.contains("--weighted false"),
        "{e}"
    );

    // The same run without `[eval] weighted`: the weights still shape the
    // training loss, but the figures are unweighted and say nothing.
    let plain = run_with(&config(&dir, &["eval.weighted=false"]), RunOptions::default(), |_| {}).unwrap();
    assert!(!plain.report.test.weighted);
    assert!(!plain.report.metrics_table().contains("weighted"));
    let unweighted = mtrec_train::auc(&outputs[0], &labels(0), None).unwrap();
    assert_ne!(unweighted, click.auc.unwrap(), "the weights change the AUC");
    assert!(plain.report.test.tasks[0].metrics.weight.is_none());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn validation_whose_positives_all_weigh_zero_is_refused_before_training_when_weighted() {
    let dir = temp("zero-positives");
    write_csv(&dir.join("train.csv"), 300, 1);
    write_csv(&dir.join("test.csv"), 100, 3);
    // The validation file's clicked rows all weigh 0: its weighted AUC is
    // undefined, its unweighted AUC is not.
    write_csv(&dir.join("valid.csv"), 200, 2);
    let text = std::fs::read_to_string(dir.join("valid.csv")).unwrap();
    let mut lines = text.lines();
    let mut zeroed = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let mut f: Vec<&str> = line.split(',').collect();
        if f[4] == "1" {
            f[3] = "0";
        }
        zeroed.push_str(&f.join(","));
        zeroed.push('\n');
    }
    std::fs::write(dir.join("valid.csv"), zeroed).unwrap();
    // Click alone: with no task left to early-stop on, the run is refused.
    let click_only = CONFIG
        .split("[[tasks]]\nname = \"spend\"")
        .next()
        .unwrap()
        .replace("weight = \"w\"\n", "weight = \"w\"\nignore = [\"spend\"]\n");
    let click_only = click_only.as_str();
    let cfg = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let mut cfg = parse(click_only, &dir.join("config.toml"), &sets).unwrap();
        cfg.data_dir = Some(dir.clone());
        cfg
    };
    mtrec_runner::link_builtin_plugins();
    let e = run_with(&cfg(&[]), RunOptions::default(), |_| panic!("trained an epoch"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("labelled validation rows of weight > 0 are all of class 0"),
        "{e}"
    );
    // Unweighted, the same files train.
    run_with(
        &cfg(&["eval.weighted=false", "train.epochs=1"]),
        RunOptions::default(),
        |_| {},
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
