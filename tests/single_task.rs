//! The single-task baseline is K independent one-task models: its per-task
//! results equal K separate one-task runs of the same config (same seed,
//! same batches), each task early-stopped on its own validation metric, and
//! its run folder predicts, evaluates and resumes like any other.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mtrec_runner::config::parse;
use mtrec_runner::run::{eval_file, load_trained, predict_file, run_with, task_dir, RunOptions, RunResult};
use mtrec_tests::write_csv;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtrec-single-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const DATA: &str = r#"
[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user", "city"]
dense = ["age"]
"#;

/// The model and training sections: enough epochs and patience for the two
/// tasks to stop at different epochs.
const MODEL: &str = r#"
[model]
arch = "single-task"
bottom_units = [16]
tower_units = [8]

[train]
epochs = 12
patience = 2
batch_size = 32
lr = 0.02
seed = 3
"#;

const CLICK: &str = "\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = { column = \"click\" }\n";
const SPEND: &str = "\n[[tasks]]\nname = \"spend\"\nkind = \"regression\"\nlabel = { column = \"spend\" }\n";

/// Writes the three CSV files into a fresh folder.
fn data(name: &str) -> PathBuf {
    let dir = temp(name);
    write_csv(&dir.join("train.csv"), 600, 1, false);
    write_csv(&dir.join("valid.csv"), 200, 2, false);
    write_csv(&dir.join("test.csv"), 200, 3, false);
    dir
}

fn run_text(text: &str, data: &Path, out: &Path, resume: bool) -> RunResult {
    let mut cfg = parse(text, &data.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(data.to_path_buf());
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        resume,
        ..RunOptions::default()
    };
    run_with(&cfg, opts, |_| {}).unwrap()
}

/// The two-task single-task config, and the one-task config of each task
/// (the other task's label column then unused, so ignored).
fn configs() -> (String, [String; 2]) {
    let both = format!("{DATA}{MODEL}{CLICK}{SPEND}");
    let click = format!("{DATA}ignore = [\"spend\"]\n{MODEL}{CLICK}");
    let spend = format!("{DATA}ignore = [\"click\"]\n{MODEL}{SPEND}");
    (both, [click, spend])
}

fn column(csv: &str, k: usize) -> Vec<String> {
    csv.lines().map(|l| l.split(',').nth(k).unwrap().to_string()).collect()
}

/// Per task: the same metrics on every split, the same history, best epoch
/// and weights as the one-task run, bit for bit (the same code on the same
/// data: no summation differs); the same predictions, and `eval` on the
/// test file gives the report's test metrics.
#[test]
fn single_task_equals_k_one_task_runs() {
    mtrec_runner::link_builtin_plugins();
    let data = data("equal-data");
    let (both, one) = configs();
    let out = temp("equal-run");
    let joint = run_text(&both, &data, &out, false);
    let r = &joint.report;
    assert_eq!(r.tasks.len(), 2);
    assert_eq!(r.task_outcomes.len(), 2);
    assert_eq!(joint.models.len(), 2);
    assert!(r.test.utilisation.is_empty());

    let scores = out.join("scores.csv");
    assert_eq!(predict_file(&out, &data.join("test.csv"), &scores).unwrap(), 200);
    let joint_scores = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(joint_scores.lines().next(), Some("click,spend"));
    let ev = eval_file(&out, &data.join("test.csv")).unwrap();
    assert_eq!(ev.tasks, r.test.tasks);

    let mut parameters = 0;
    for (k, text) in one.iter().enumerate() {
        let out_k = temp(&format!("equal-one-{k}"));
        let alone = run_text(text, &data, &out_k, false);
        let a = &alone.report;
        let name = &a.tasks[0].name;
        assert_eq!(&r.tasks[k].name, name);
        for (split, joint_split, alone_split) in [
            ("train", &r.train, &a.train),
            ("valid", &r.valid, &a.valid),
            ("test", &r.test, &a.test),
        ] {
            assert_eq!(joint_split.tasks[k], alone_split.tasks[0], "{name} {split}");
        }
        let o = &r.task_outcomes[k];
        assert_eq!(&o.task, name);
        assert_eq!(o.outcome.best_epoch, a.outcome.best_epoch, "{name}");
        assert_eq!(o.outcome.history.len(), a.outcome.history.len(), "{name}");
        for (h, g) in o.outcome.history.iter().zip(&a.outcome.history) {
            assert_eq!(h.train_loss, g.train_loss, "{name} epoch {}", h.epoch);
            assert_eq!(h.valid.tasks, g.valid.tasks, "{name} epoch {}", h.epoch);
        }
        let (mine, theirs) = (joint.models[k].params.tensors(), alone.models[0].params.tensors());
        assert_eq!(mine.len(), theirs.len());
        for (n, t) in &theirs {
            let (x, y) = (t.flatten_all().unwrap(), mine[n].flatten_all().unwrap());
            assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap(), "{name}: {n}");
        }
        parameters += a.parameters;

        let scores_k = out_k.join("scores.csv");
        predict_file(&out_k, &data.join("test.csv"), &scores_k).unwrap();
        let alone_scores = std::fs::read_to_string(&scores_k).unwrap();
        assert_eq!(column(&joint_scores, k), column(&alone_scores, 0), "{name} predictions");
        // The task's own folder is a complete run folder of its own.
        let own = task_dir(&out, name);
        assert_eq!(eval_file(&own, &data.join("test.csv")).unwrap().tasks, a.test.tasks);
        std::fs::remove_dir_all(&out_k).ok();
    }
    assert_eq!(r.parameters, parameters);
    assert_eq!(load_trained(&out).unwrap().parameter_count(), parameters);
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&data).ok();
}

/// Each task keeps the weights of its own best validation epoch: here the
/// two tasks' best epochs differ, and each task's reported validation
/// metric is the one of its own best epoch (not of the other's).
#[test]
fn each_task_stops_on_its_own_validation_metric() {
    mtrec_runner::link_builtin_plugins();
    let data = data("early-data");
    let (both, _) = configs();
    let out = temp("early-run");
    let joint = run_text(&both, &data, &out, false);
    let r = &joint.report;
    let best: Vec<usize> = r.task_outcomes.iter().map(|t| t.outcome.best_epoch).collect();
    assert_ne!(best[0], best[1], "the case needs different best epochs: {best:?}");
    for (k, t) in r.task_outcomes.iter().enumerate() {
        let h = &t.outcome.history;
        let at_best = &h[t.outcome.best_epoch - 1].valid.tasks[0];
        assert_eq!(&r.valid.tasks[k], at_best, "{}", t.task);
        // Its own best: no other epoch scores higher on its own metric.
        let score = |e: &mtrec_train::EpochLog| e.valid.tasks[0].metrics.headline().score().unwrap();
        let top = h.iter().map(score).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(score(&h[t.outcome.best_epoch - 1]), top, "{}", t.task);
        // Patience 2: it trained two epochs past its best, unless the
        // epochs ran out.
        assert!(
            h.len() == t.outcome.best_epoch + 2 || h.len() == 12,
            "{}: {best:?}",
            t.task
        );
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&data).ok();
}

/// A single-task run killed while its second task trained continues with
/// `--resume`: the finished task is not trained again, the other trains,
/// and the report equals the uninterrupted run's.
#[test]
fn single_task_run_resumes() {
    mtrec_runner::link_builtin_plugins();
    let data = data("resume-data");
    let (both, _) = configs();
    let out = temp("resume-run");
    let straight = run_text(&both, &data, &out, false);
    // "Killed" before the second task's first checkpoint and before the end.
    std::fs::remove_dir_all(task_dir(&out, "spend")).unwrap();
    std::fs::remove_file(out.join("report.json")).unwrap();
    assert!(load_trained(&out).is_err_and(|e| e.to_string().contains("--resume")));
    // A fresh run refuses the folder: it holds a run.
    let mut cfg = parse(&both, &data.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(data.clone());
    let opts = RunOptions {
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    let err = run_with(&cfg, opts, |_| {}).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");

    let resumed = run_text(&both, &data, &out, true);
    assert_eq!(resumed.report.test.tasks, straight.report.test.tasks);
    assert_eq!(resumed.report.valid.tasks, straight.report.valid.tasks);
    assert!(out.join("report.json").exists());
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&data).ok();
}
