//! `mpirun -np 2 mtrec run ...` (cargo feature `distributed`): two ranks
//! with batch b train as one process with batch 2b (per-step losses, test
//! AUCs), only rank 0 writes the run folder, `--resume` continues with the
//! same number of ranks, mismatched configs are refused naming the rank,
//! a rank killed mid-epoch ends the job within seconds naming it, and
//! streamed census-income (when the shared data is there) matches too.
//!
//! Needs Open MPI's `mpirun`; skipped with a message when it is missing,
//! unless `MTREC_REQUIRE_MPI=1` (CI, `.ci/run`), which makes that a failure.
#![cfg(all(unix, feature = "distributed"))]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn have_mpirun() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)";
        if std::env::var("MTREC_REQUIRE_MPI").is_ok_and(|v| v == "1") {
            panic!("{message}; MTREC_REQUIRE_MPI=1, so this is a failure");
        }
        eprintln!("skipped: {message}");
    }
    found
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mtrec-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A command line of `mtrec` for `mpirun`, with the environment it needs.
fn mtrec_args(args: &[&str]) -> Vec<String> {
    std::iter::once(env!("CARGO_BIN_EXE_mtrec").to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

/// Runs `mpirun` with `ranks` (one `mtrec` command line per group, MPMD
/// style: `-np n cmd : -np m cmd2`) and `env`; kills it after `limit`.
fn mpirun(groups: &[(usize, Vec<String>)], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    // A session folder of its own for each job: Open MPI creates it under
    // $TMPDIR, and jobs started at once by parallel tests raced on one
    // (`mkdir /tmp/ompi.<host>.0: File exists`). Short: it holds sockets.
    static JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let job = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = PathBuf::from(format!("/tmp/mtrec-ompi-{}-{job}", std::process::id()));
    let _ = std::fs::remove_dir_all(&session);
    std::fs::create_dir_all(&session).unwrap();
    let mut c = Command::new("mpirun");
    // Loopback on one machine; root (CI containers) needs explicit consent.
    c.args(["--oversubscribe", "--mca", "btl", "self,tcp,vader"])
        .env("TMPDIR", &session)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1");
    for (i, (n, cmd)) in groups.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", &n.to_string()]).args(cmd);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let started = Instant::now();
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mpirun still running after {limit:?} (a hang):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&session);
    (out, elapsed)
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small multi-domain MMoE run: sparse ids (embedding tables), domains,
/// two tasks.
fn run_args(out: &Path, batch: usize, epochs: usize) -> Vec<String> {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/mmoe-md.toml");
    mtrec_args(&[
        "run",
        "--config",
        config,
        "--set",
        "data.rows=3000",
        "--set",
        &format!("train.epochs={epochs}"),
        "--set",
        &format!("train.batch_size={batch}"),
        "--set",
        "train.patience=0",
        "--out",
        out.to_str().unwrap(),
    ])
}

fn step_losses(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn test_aucs(run: &Path) -> Vec<f64> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["test"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["auc"].as_f64().unwrap())
        .collect()
}

fn assert_close_steps(a: &[Vec<f64>], b: &[Vec<f64>]) {
    assert_eq!(a.len(), b.len(), "steps");
    for (s, (x, y)) in a.iter().zip(b).enumerate() {
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "step {s}: {x:?} vs {y:?}");
        }
    }
}

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn two_ranks_match_one_process_and_resume_with_the_same_ranks() {
    if !have_mpirun() {
        return;
    }
    let dir = scratch("equal");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let (one_steps, two_steps) = (dir.join("one.jsonl"), dir.join("two.jsonl"));
    let (o, _) = mpirun(
        &[(1, run_args(&one, 128, 2))],
        &[("MTREC_STEP_LOSSES", one_steps.to_str().unwrap())],
        LIMIT,
    );
    assert!(o.status.success(), "{}", text(&o));
    let (o, _) = mpirun(
        &[(2, run_args(&two, 64, 2))],
        &[("MTREC_STEP_LOSSES", two_steps.to_str().unwrap())],
        LIMIT,
    );
    assert!(o.status.success(), "{}", text(&o));
    // Rank 0 alone prints the report.
    assert_eq!(text(&o).matches("run folder:").count(), 1, "{}", text(&o));
    assert_close_steps(&step_losses(&one_steps), &step_losses(&two_steps));
    for (a, b) in test_aucs(&one).iter().zip(test_aucs(&two)) {
        assert!((a - b).abs() < 1e-4, "test AUC {a} vs {b}");
    }
    // One history line per epoch: rank 1 wrote nothing.
    let history = std::fs::read_to_string(two.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 2);
    assert!(history.contains("\"exchange\""), "bytes per step are logged: {history}");

    // Killed after epoch 1's checkpoint, resumed with 2 ranks: the same end.
    let resumed = dir.join("resumed");
    let steps_per_epoch = step_losses(&two_steps).len() / 2;
    let kill = format!("1:{}", steps_per_epoch + 2);
    let (o, _) = mpirun(
        &[(2, run_args(&resumed, 64, 2))],
        &[("MTREC_TEST_KILL_RANK", &kill)],
        LIMIT,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let (o, _) = mpirun(
        &[(2, mtrec_args(&["run", "--resume", resumed.to_str().unwrap()]))],
        &[],
        LIMIT,
    );
    assert!(o.status.success(), "{}", text(&o));
    for (a, b) in test_aucs(&two).iter().zip(test_aucs(&resumed)) {
        assert!((a - b).abs() < 1e-6, "resumed test AUC {b} vs uninterrupted {a}");
    }
    // Another number of ranks would change the global batch: refused.
    let o = Command::new(env!("CARGO_BIN_EXE_mtrec"))
        .args(["run", "--resume", resumed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("trained on 2 rank(s) and is resumed on 1"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds_naming_it() {
    if !have_mpirun() {
        return;
    }
    let dir = scratch("kill");
    // 50 epochs would take minutes; rank 1 dies after 5 batches.
    let (o, elapsed) = mpirun(
        &[(2, run_args(&dir.join("run"), 64, 50))],
        &[("MTREC_TEST_KILL_RANK", "1:5")],
        Duration::from_secs(120),
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    // The launcher's report (the dying rank's own line cannot be relied on:
    // a crashed machine prints nothing).
    assert!(t.contains("process rank 1"), "the message names the rank: {t}");
    // Start-up, data and 5 batches take a few seconds; then the end must be quick.
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}: {t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mismatched_configs_are_refused_naming_the_rank() {
    if !have_mpirun() {
        return;
    }
    let dir = scratch("mismatch");
    let mut other = run_args(&dir.join("run"), 64, 1);
    other.extend(["--set".to_string(), "train.lr=0.01".to_string()]);
    let (o, _) = mpirun(
        &[(1, run_args(&dir.join("run"), 64, 1)), (1, other)],
        &[],
        Duration::from_secs(120),
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("differs between ranks: rank 1"), "{t}");
    // Printed by a failing rank itself before its MPI_Abort (whichever
    // aborts first ends the other, which may not get to print).
    assert!(
        t.contains("error on rank ") && t.contains("MPI_ABORT was invoked"),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shared data folder (`MTREC_DATA_DIR`, else `../shared/data` beside
/// the workspace) when it holds census-income; else `None` with a message,
/// or a failure when `MTREC_REQUIRE_DATA=1`.
fn census_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MTREC_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")));
    if dir.join("census-income").join("train.data.gz").exists() {
        return Some(dir);
    }
    let message = format!("census-income not found under {}", dir.display());
    if std::env::var("MTREC_REQUIRE_DATA").is_ok_and(|v| v == "1") {
        panic!("{message}; MTREC_REQUIRE_DATA=1, so this is a failure");
    }
    eprintln!("skipped: {message}");
    None
}

#[test]
fn streamed_census_on_two_ranks_matches_one_process() {
    if !have_mpirun() {
        return;
    }
    let Some(data) = census_dir() else { return };
    let dir = scratch("streamed");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/census-income.toml");
    let args = |out: &Path, batch: usize| {
        mtrec_args(&[
            "run",
            "--config",
            config,
            "--data-dir",
            data.to_str().unwrap(),
            "--set",
            "data.streaming=true",
            "--set",
            "train.epochs=1",
            "--set",
            &format!("train.batch_size={batch}"),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (one, two) = (dir.join("one"), dir.join("two"));
    let (one_steps, two_steps) = (dir.join("one.jsonl"), dir.join("two.jsonl"));
    let (o, _) = mpirun(
        &[(1, args(&one, 256))],
        &[("MTREC_STEP_LOSSES", one_steps.to_str().unwrap())],
        LIMIT,
    );
    assert!(o.status.success(), "{}", text(&o));
    let (o, _) = mpirun(
        &[(2, args(&two, 128))],
        &[("MTREC_STEP_LOSSES", two_steps.to_str().unwrap())],
        LIMIT,
    );
    assert!(o.status.success(), "{}", text(&o));
    let steps = step_losses(&one_steps);
    assert_eq!(steps.len(), 234, "59,857 training rows in batches of 256");
    assert_close_steps(&steps, &step_losses(&two_steps));
    for (a, b) in test_aucs(&one).iter().zip(test_aucs(&two)) {
        assert!((a - b).abs() < 1e-4, "test AUC {a} vs {b}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CSV data set written by the test: two id fields (one with more ids
/// than rows of a part, so the ranks' vocabularies differ before they are
/// merged), a dense column, a binary label from an inline formula.
fn write_csv_data(dir: &Path, rows: usize) -> PathBuf {
    let mut text = String::from("user,item,price,click\n");
    for i in 0..rows {
        let (u, it) = ((i * 7919) % 211, (i * 104_729) % 997);
        let price = ((i * 31) % 100) as f64 / 10.0;
        let score = (u % 5) as f64 - 2.0 + (it % 3) as f64 - 1.0 + price / 5.0 - 1.0;
        let click = u8::from(score + ((i * 13) % 7) as f64 / 3.5 - 1.0 > 0.0);
        text.push_str(&format!("u{u},i{it},{price},{click}\n"));
    }
    std::fs::write(dir.join("clicks.csv"), text).unwrap();
    let config = dir.join("clicks.toml");
    std::fs::write(
        &config,
        r#"[data]
source = "csv"
data_dir = "."
path = "clicks.csv"
sparse = ["user", "item"]
dense = ["price"]
split = [0.8, 0.1, 0.1]

[model]
arch = "mmoe"
experts = 2
expert_units = [16]
tower_units = [8]

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }

[train]
epochs = 2
patience = 0
seed = 1
lr = 0.02
"#,
    )
    .unwrap();
    config
}

fn report(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap()
}

#[test]
fn ranks_reading_their_own_parts_match_one_process_with_as_many_shards() {
    if !have_mpirun() {
        return;
    }
    let dir = scratch("shards");
    let config = write_csv_data(&dir, 3001);
    for streaming in [false, true] {
        let args = |out: &Path, batch: usize| {
            mtrec_args(&[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--set",
                "data.shards=2",
                "--set",
                &format!("data.streaming={streaming}"),
                "--set",
                &format!("train.batch_size={batch}"),
                "--out",
                out.to_str().unwrap(),
            ])
        };
        let tag = if streaming { "streamed" } else { "memory" };
        let (one, two) = (dir.join(format!("one-{tag}")), dir.join(format!("two-{tag}")));
        let (one_steps, two_steps) = (
            dir.join(format!("one-{tag}.jsonl")),
            dir.join(format!("two-{tag}.jsonl")),
        );
        let (o, _) = mpirun(
            &[(1, args(&one, 64))],
            &[("MTREC_STEP_LOSSES", one_steps.to_str().unwrap())],
            LIMIT,
        );
        assert!(o.status.success(), "{tag}: {}", text(&o));
        let (o, _) = mpirun(
            &[(2, args(&two, 32))],
            &[("MTREC_STEP_LOSSES", two_steps.to_str().unwrap())],
            LIMIT,
        );
        assert!(o.status.success(), "{tag}: {}", text(&o));
        let steps = step_losses(&one_steps);
        assert!(steps.len() >= 2 * 36, "{tag}: {} steps", steps.len());
        assert_close_steps(&steps, &step_losses(&two_steps));
        let (a, b) = (report(&one), report(&two));
        // The same rows counted (the ranks' parts summed) and the same
        // metrics, the training rows' included (gathered from the ranks).
        assert_eq!(a["rows"], b["rows"], "{tag}");
        for part in ["train", "valid", "test"] {
            let (x, y) = (&a[part]["tasks"][0], &b[part]["tasks"][0]);
            assert_eq!(x["rows"], y["rows"], "{tag} {part}");
            let (x, y) = (x["auc"].as_f64().unwrap(), y["auc"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{tag} {part} AUC {x} vs {y}");
            // A model that learned (equal constant outputs would tie).
            assert!(x > 0.8, "{tag} {part} AUC {x}");
        }
        // Both ranks formed the preprocessing of all training rows: the
        // saved one equals the one process's.
        let pre = |r: &Path| std::fs::read_to_string(r.join("preprocess.json")).unwrap();
        let (p, q): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&pre(&one)).unwrap(),
            serde_json::from_str(&pre(&two)).unwrap(),
        );
        assert_eq!(p["sparse"], q["sparse"], "{tag}: vocabularies");
        assert_eq!(p["train_rows"], q["train_rows"], "{tag}");
        if streaming {
            continue;
        }
        // Killed after epoch 1's checkpoint, resumed with 2 ranks: each
        // reads its part again, and the run ends as the uninterrupted one.
        let resumed = dir.join("resumed");
        let kill = format!("1:{}", steps.len() / 2 + 2);
        let (o, _) = mpirun(&[(2, args(&resumed, 32))], &[("MTREC_TEST_KILL_RANK", &kill)], LIMIT);
        assert!(!o.status.success(), "{}", text(&o));
        let (o, _) = mpirun(
            &[(2, mtrec_args(&["run", "--resume", resumed.to_str().unwrap()]))],
            &[],
            LIMIT,
        );
        assert!(o.status.success(), "{}", text(&o));
        for (a, b) in test_aucs(&two).iter().zip(test_aucs(&resumed)) {
            assert!((a - b).abs() < 1e-6, "resumed test AUC {b} vs uninterrupted {a}");
        }
    }
    // Another number of parts than ranks is refused, naming the key.
    let (o, _) = mpirun(
        &[(
            2,
            mtrec_args(&["run", "--config", config.to_str().unwrap(), "--set", "data.shards=3"]),
        )],
        &[],
        LIMIT,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("shards") && text(&o).contains("give shards = 2"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
