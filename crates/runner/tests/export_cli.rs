//! `mtrec export` through the binary: a run folder becomes `model.onnx`
//! and a byte-for-byte copy of its `preprocess.json`; a model with a
//! component kind that has no ONNX form (ESMM's `esmm-ctcvr` tower) exits
//! non-zero with a message naming the kind, and writes nothing. (That the
//! graph computes what the model computes: tests/onnx_export.rs, with ONNX
//! Runtime.)
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mtrec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtrec"));
    // Two cores shared by the tests running at once.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mtrec-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small CSV data set: a category, a number, two labels.
fn write_csv(path: &Path, rows: usize, seed: u64) {
    let mut s = String::from("user,age,click,buy\n");
    let mut x = seed;
    for _ in 0..rows {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let user = (x >> 33) % 20;
        let age = 18 + (x >> 45) % 60;
        let click = u8::from(user + age % 7 > 12);
        let buy = click * u8::from(age > 40);
        let _ = writeln!(s, "u{user},{age},{click},{buy}");
    }
    std::fs::write(path, s).unwrap();
}

/// A one-epoch run of `model` (a `[model]` section) and `tasks` on the CSV files.
fn run(dir: &Path, model: &str, tasks: &str) -> PathBuf {
    for (split, rows, seed) in [("train", 300, 1), ("valid", 100, 2), ("test", 100, 3)] {
        write_csv(&dir.join(format!("{split}.csv")), rows, seed);
    }
    let config = format!(
        "[data]\nsource = \"csv\"\ntrain = \"train.csv\"\nvalid = \"valid.csv\"\ntest = \"test.csv\"\n\
         sparse = [\"user\"]\ndense = [\"age\"]\n\n{model}\n[train]\nepochs = 1\nbatch_size = 64\n\n{tasks}"
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let o = mtrec()
        .current_dir(dir)
        .env_remove("MTREC_DATA_DIR")
        .args(["run", "--quiet", "--config", "config.toml", "--out", "run"])
        .output()
        .unwrap();
    assert!(o.status.success(), "mtrec run failed: {}", text(&o));
    dir.join("run")
}

fn export(run: &Path, out: &Path) -> Output {
    mtrec()
        .args(["export", "--model"])
        .arg(run)
        .args(["--format", "onnx", "--out"])
        .arg(out)
        .output()
        .unwrap()
}

/// Two tasks on the CSV's labels (ESMM's click and click-and-buy).
const TASKS: &str = "[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = { column = \"click\" }\n\n\
                     [[tasks]]\nname = \"buy\"\nkind = \"binary\"\nlabel = { column = \"buy\" }\n";

#[test]
fn export_writes_the_model_and_the_preprocessing() {
    let dir = scratch("mmoe");
    let run = run(&dir, "[model]\narch = \"mmoe\"\nexperts = 2\n", TASKS);
    let out = dir.join("onnx");
    let o = export(&run, &out);
    assert!(o.status.success(), "mtrec export failed: {}", text(&o));
    let model = std::fs::read(out.join("model.onnx")).unwrap();
    assert!(model.len() > 1000, "{} bytes", model.len());
    assert_eq!(
        std::fs::read(out.join("preprocess.json")).unwrap(),
        std::fs::read(run.join("preprocess.json")).unwrap()
    );
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "only the two files, no temporary left: {names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_kind_without_onnx_form_exits_non_zero_naming_it() {
    let dir = scratch("esmm");
    let run = run(
        &dir,
        "[model]\narch = \"esmm\"\nctr_units = [8]\ncvr_units = [8]\nctr_task = \"click\"\nctcvr_task = \"buy\"\n",
        TASKS,
    );
    let out = dir.join("onnx");
    let o = export(&run, &out);
    assert!(!o.status.success(), "exported a model it cannot express: {}", text(&o));
    let e = text(&o);
    assert!(
        e.contains("component kind `esmm-ctcvr` cannot be expressed in ONNX"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written");
    std::fs::remove_dir_all(&dir).ok();
}
