//! Run folders through the `mtrec` binary itself: one run per folder (a
//! second is refused while the first goes on), a run killed with SIGKILL
//! restarts with no temporary file left, `--resume` reads config-relative
//! data paths as the first run did, damaged weights and checkpoints are
//! named with the fix, and every file of a folder has the same permissions.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mtrec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtrec"));
    // Two cores shared by the tests running at once.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mtrec-runner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "mtrec failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// All files of a run folder share one mode (the lock file included).
fn assert_same_permissions(dir: &Path) {
    let all = files(dir);
    let first = mode(&all[0]);
    for f in &all {
        assert_eq!(mode(f), first, "{} vs {}", f.display(), all[0].display());
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two concurrent runs on one `--out`: the second is refused, naming the
/// first's pid, and leaves its folder as it was. The first, killed with
/// SIGKILL, leaves a stale lock file and (simulated) temporary files of a
/// save under its pid; `--resume` takes the lock over, removes them and
/// finishes, with a valid history.
#[test]
fn a_second_run_is_refused_and_a_killed_run_restarts_clean() {
    let dir = scratch("concurrent");
    let out = dir.join("run");
    let mut first = mtrec()
        .args(["run", "--arch", "mmoe", "--quiet", "--out"])
        .arg(&out)
        .args([
            "--set",
            "data.rows=20000",
            "--set",
            "train.epochs=30",
            "--set",
            "train.patience=0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let state = out.join("checkpoint").join("state.json");
    wait_for("the first epoch's checkpoint", Duration::from_secs(300), || {
        state.exists()
    });
    let lock = std::fs::read_to_string(out.join("run.lock")).unwrap();
    assert!(lock.starts_with(&format!("pid {pid}\n")), "{lock}");
    assert_eq!(mode(&out.join("run.lock")), mode(&out.join("config.toml")));
    let config = std::fs::read(out.join("config.toml")).unwrap();

    let second = mtrec()
        .args(["run", "--arch", "mmoe", "--out"])
        .arg(&out)
        .args(["--set", "data.rows=300", "--set", "train.epochs=1"])
        .output()
        .unwrap();
    let err = stderr(&second);
    assert!(!second.status.success(), "the second run must be refused: {err}");
    assert!(
        err.contains("is in use by another run") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    assert!(err.contains("--out"), "the fix: {err}");
    assert!(first.try_wait().unwrap().is_none(), "the first run goes on");
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(out.join("run.lock")).unwrap(), lock);

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(!out.join("report.json").exists(), "killed before the end");
    // What a save killed mid-write leaves: the atomic writer's temporary
    // names, under the dead process's pid.
    let temps = [
        out.join(format!("model.safetensors.tmp{pid}")),
        out.join("checkpoint")
            .join(format!("epoch-0002.weights.safetensors.tmp{pid}")),
        out.join(format!("report.json.tmp{pid}")),
        // Inside the atomic writer, the safetensors crate's own temporary.
        out.join("checkpoint").join(".tmpQ7r2Zx"),
    ];
    for t in &temps {
        std::fs::write(t, b"half a file").unwrap();
    }

    ok(mtrec().args(["run", "--quiet", "--resume"]).arg(&out).output().unwrap());
    let left: Vec<PathBuf> = files(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp") || p.ends_with("run.lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 30, "{history}");
    for line in history.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    assert!(out.join("report.json").exists() && out.join("model.safetensors").exists());
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), config);
    assert_same_permissions(&out);
    std::fs::remove_dir_all(&dir).ok();
}

/// A small CSV data set with signal in a category and a number.
fn write_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,age,click\n");
    let mut x = seed;
    for _ in 0..rows {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let user = (x >> 33) % 20;
        let age = 18 + (x >> 45) % 60;
        let noise = ((x >> 20) % 100) as f64 / 100.0;
        let click = u8::from((user as f64 / 20.0) + (age as f64 - 48.0) / 60.0 + noise - 0.5 > 0.0);
        let _ = writeln!(s, "u{user},{age},{click}");
    }
    std::fs::write(path, s).unwrap();
}

const CSV_CONFIG: &str = r#"[data]
source = "csv"
train = "train.csv"
valid = "valid.csv"
test = "test.csv"
sparse = ["user"]
dense = ["age"]

[model]
arch = "mmoe"
experts = 2

[train]
epochs = 3
batch_size = 64

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }
"#;

/// `dir/data/` with the CSV files and `config.toml` naming them relative
/// to itself; a finished run of it in `dir/run`, started from `dir` with a
/// relative `--config` and no `MTREC_DATA_DIR`.
fn csv_run(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_csv(&data.join("train.csv"), 600, 1);
    write_csv(&data.join("valid.csv"), 200, 2);
    write_csv(&data.join("test.csv"), 200, 3);
    std::fs::write(data.join("config.toml"), CSV_CONFIG).unwrap();
    ok(mtrec()
        .current_dir(dir)
        .env_remove("MTREC_DATA_DIR")
        .args(["run", "--quiet", "--config", "data/config.toml", "--out", "run"])
        .output()
        .unwrap());
    dir.join("run")
}

fn test_auc(run: &Path) -> f64 {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["test"]["tasks"][0]["auc"].as_f64().unwrap()
}

/// Paths relative to the config's folder: `--resume` reads the same files,
/// from another working directory, without `--data-dir`, and even with
/// `MTREC_DATA_DIR` pointing elsewhere (the run folder's config records the
/// folder, which comes first).
#[test]
fn resume_reads_config_relative_data_without_data_dir() {
    let dir = scratch("relative");
    let run = csv_run(&dir);
    let data = std::path::absolute(dir.join("data")).unwrap();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("data_dir = {:?}", data.display().to_string())),
        "{config}"
    );
    assert!(
        config.contains("train = \"train.csv\""),
        "paths stay relative: {config}"
    );
    let auc = test_auc(&run);
    std::fs::remove_file(run.join("report.json")).unwrap();

    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    ok(mtrec()
        .current_dir(&elsewhere)
        .env("MTREC_DATA_DIR", &elsewhere)
        .args(["run", "--quiet", "--resume"])
        .arg(std::path::absolute(&run).unwrap())
        .output()
        .unwrap());
    // Nothing left to train: the same weights on the same files.
    assert_eq!(test_auc(&run), auc);
    assert_same_permissions(&run);
    std::fs::remove_dir_all(&dir).ok();
}

/// A damaged `model.safetensors` is named with the fix (the checkpoint's
/// copy of the same weights), and the fix works; a damaged checkpoint file
/// on `--resume` is named with its fix.
#[test]
fn damaged_weights_and_checkpoints_name_the_file_and_the_fix() {
    let dir = scratch("damaged");
    let run = csv_run(&dir);
    let test = dir.join("data").join("test.csv");
    let weights = run.join("model.safetensors");
    let intact = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &intact[..intact.len() / 2]).unwrap();
    let o = mtrec()
        .args(["eval", "--model"])
        .arg(&run)
        .arg("--input")
        .arg(&test)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("model.safetensors: damaged"), "{err}");
    let best = run.join("checkpoint").join("epoch-0003.best.safetensors");
    assert!(
        err.contains(&format!("cp {} {}", best.display(), weights.display())),
        "{err}"
    );
    std::fs::copy(&best, &weights).unwrap();
    let o = ok(mtrec()
        .args(["eval", "--model"])
        .arg(&run)
        .arg("--input")
        .arg(&test)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).contains("click"));

    // Garbage instead of a checkpoint's weights.
    let ckpt = run.join("checkpoint").join("epoch-0003.weights.safetensors");
    std::fs::write(&ckpt, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    let o = mtrec().args(["run", "--quiet", "--resume"]).arg(&run).output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains(&format!("{}: damaged", ckpt.display())), "{err}");
    assert!(err.contains("start the run again"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
