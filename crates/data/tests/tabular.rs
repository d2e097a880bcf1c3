//! Schema-driven CSV / Parquet input: errors (file, line, column), vocabulary
//! and OOV, scaling fitted on train only, hashing, sequences, Parquet = gzip
//! CSV, chunks, the saved preprocessor, single-file splits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mtrec_core::TaskKind;
use mtrec_data::preprocess::{stable_hash, Encoding};
use mtrec_data::schema::Separator;
use mtrec_data::{
    load_single, load_split, load_tabular, DataError, Dataset, Labels, Pass, Place, Preprocessor, TabularSchema,
    TaskSpec,
};
use serde::Deserialize;

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mtrec-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if name.ends_with(".gz") {
            let f = std::fs::File::create(&p).expect("create");
            let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            gz.write_all(text.as_bytes()).expect("write gz");
            gz.finish().expect("finish gz");
        } else {
            std::fs::write(&p, text).expect("write");
        }
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[data]` + `[[tasks]]` as in a config file.
#[derive(Deserialize)]
struct Config {
    data: TabularSchema,
    #[serde(default)]
    tasks: Vec<TaskSpec>,
}

fn config(text: &str) -> (TabularSchema, Vec<TaskSpec>) {
    let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("config does not parse: {e}\n{text}"));
    (c.data, c.tasks)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn fit(dir: &TempDir, schema: &TabularSchema, tasks: &[TaskSpec], train: &str) -> Result<Preprocessor, DataError> {
    Preprocessor::fit(schema, tasks, &dir.0.join(train), None)
}

const BASIC: &str = r#"
[data]
sparse = ["city"]
dense = ["age"]

[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#;

const BASIC_CSV: &str = "city,age,click\nparis,30,1\nrome,40,0\nparis,50,1\n";

// ---------------------------------------------------------------- errors

#[test]
fn missing_column_names_file_line_and_column() {
    let dir = TempDir::new("missing-column");
    dir.write("train.csv", "city,agee,click\nparis,30,1\n");
    let (schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("train.csv: line 1, column `age`"), "{msg}");
    assert!(msg.contains("dense column is not in the file"), "{msg}");
    assert!(msg.contains("`agee`"), "the file's columns are listed: {msg}");
}

#[test]
fn headerless_file_uses_columns_and_missing_one_is_named() {
    let dir = TempDir::new("headerless");
    dir.write("train.csv", "paris,30,1\nrome,40,0\n");
    let (mut schema, tasks) = config(BASIC);
    schema.header = false;
    schema.columns = Some(vec!["city".into(), "age".into(), "click".into()]);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    assert_eq!(pre.train_rows, 2);

    schema.columns = Some(vec!["town".into(), "age".into(), "click".into()]);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("train.csv: column `city`"), "{msg}");
    assert!(msg.contains("sparse column is not in the file"), "{msg}");

    schema.columns = None;
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("`header = false` needs `columns`"), "{msg}");
}

#[test]
fn wrong_field_count_names_line_and_first_missing_column() {
    let dir = TempDir::new("field-count");
    dir.write("train.csv", "city,age,click\nparis,30,1\nrome,40,0\nparis,50\n");
    let (schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("train.csv: line 4, column `click`"), "{msg}");
    assert!(msg.contains("has 2 fields but the file has 3 columns"), "{msg}");

    dir.write("long.csv", "city,age,click\nparis,30,1,9\n");
    let msg = err_text(fit(&dir, &schema, &tasks, "long.csv"));
    assert!(msg.contains("long.csv: line 2"), "{msg}");
    assert!(
        msg.contains("has 4 fields but the file has 3 columns (the last is `click`)"),
        "{msg}"
    );
}

#[test]
fn unparseable_number_names_line_and_column() {
    let dir = TempDir::new("bad-number");
    dir.write("train.csv", "city,age,click\nparis,30,1\n\nrome,forty,0\n");
    let (schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    // The blank line 3 is skipped but counted.
    assert!(msg.contains("train.csv: line 4, column `age`"), "{msg}");
    assert!(msg.contains("cannot read `forty` as a number"), "{msg}");

    // The same in a file encoded with a fitted preprocessor.
    dir.write("good.csv", BASIC_CSV);
    let pre = fit(&dir, &schema, &tasks, "good.csv").expect("fit");
    dir.write("valid.csv", "city,age,click\nparis,inf,1\n");
    let msg = err_text(pre.load_file(&dir.0.join("valid.csv")));
    assert!(
        msg.contains("valid.csv: line 2, column `age`: `inf` is not a finite number"),
        "{msg}"
    );
}

#[test]
fn line_numbers_count_blank_lines_and_quoted_newlines() {
    let dir = TempDir::new("lines");
    dir.write(
        "train.csv",
        "city,age,click\n\"par\nis\",30,1\n\n\r\nrome,31,1\n\"a\nb\",x,1\n",
    );
    let (schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    // Lines: 1 header, 2-3 quoted record, 4 and 5 blank, 6 rome, 7-8 the bad record.
    assert!(
        msg.contains("train.csv: line 7, column `age`: cannot read `x`"),
        "{msg}"
    );
    dir.write("last.csv", "city,age,click\nparis,30,1\nrome,3o,1");
    let msg = err_text(fit(&dir, &schema, &tasks, "last.csv"));
    assert!(msg.contains("last.csv: line 3, column `age`"), "{msg}");
}

#[test]
fn empty_files_are_errors() {
    let dir = TempDir::new("empty");
    dir.write("empty.csv", "");
    dir.write("header-only.csv", "city,age,click\n");
    let (schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "empty.csv"));
    assert!(
        msg.contains("empty.csv: line 1: the file is empty: no header line"),
        "{msg}"
    );
    let msg = err_text(fit(&dir, &schema, &tasks, "header-only.csv"));
    assert!(msg.contains("header-only.csv: line 2: no data rows"), "{msg}");

    dir.write("good.csv", BASIC_CSV);
    let pre = fit(&dir, &schema, &tasks, "good.csv").expect("fit");
    let msg = err_text(pre.load_file(&dir.0.join("header-only.csv")));
    assert!(msg.contains("header-only.csv: line 2: no data rows"), "{msg}");
    let msg = err_text(pre.load_file(&dir.0.join("absent.csv")));
    assert!(msg.contains("absent.csv: "), "{msg}");
}

#[test]
fn unknown_column_in_task_rule_is_named() {
    let dir = TempDir::new("task-column");
    dir.write("train.csv", BASIC_CSV);
    let (schema, _) = config(BASIC);
    let (_, tasks) = config(
        r#"
[data]
[[tasks]]
name = "click"
kind = "binary"
label = { column = "clicked", equals = "1" }
[[tasks]]
name = "old"
kind = "binary"
label = "click"
mask = { column = "agee", above = 30 }
"#,
    );
    let msg = err_text(fit(&dir, &schema, &tasks[..1], "train.csv"));
    assert!(msg.contains("train.csv: line 1, column `clicked`"), "{msg}");
    assert!(msg.contains("task `click` label column is not in the file"), "{msg}");
    let msg = err_text(fit(&dir, &schema, &tasks[1..], "train.csv"));
    assert!(
        msg.contains("line 1, column `agee`: the task `old` mask column"),
        "{msg}"
    );
}

#[test]
fn binary_label_without_rule_must_be_0_or_1() {
    let dir = TempDir::new("binary-label");
    dir.write("train.csv", "city,age,click\nparis,30,1\nrome,40,yes\n");
    let (schema, tasks) = config(BASIC);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit reads no labels");
    let msg = err_text(pre.load_file(&dir.0.join("train.csv")));
    assert!(
        msg.contains("train.csv: line 3, column `click`: task `click`: `yes` is not 0 or 1"),
        "{msg}"
    );

    // 0.0 / 1.0 / true / false are read; a missing label leaves the row out of the task.
    dir.write(
        "ok.csv",
        "city,age,click\nparis,30,1.0\nrome,40,false\nrome,41,\nparis,42,true\n",
    );
    let d = pre.load_file(&dir.0.join("ok.csv")).expect("load");
    assert_eq!(d.labels, vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(d.masks, vec![1.0, 1.0, 0.0, 1.0]);
}

#[test]
fn unseen_domain_is_an_error_naming_it_and_the_known_ones() {
    let dir = TempDir::new("domain");
    dir.write("train.csv", "city,age,scene,click\nparis,30,search,1\nrome,40,feed,0\n");
    dir.write("valid.csv", "city,age,scene,click\nparis,30,feed,1\nrome,40,mall,0\n");
    let (mut schema, tasks) = config(BASIC);
    schema.domain = Some("scene".into());
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("train");
    let dom = d.domains.as_ref().expect("domains");
    assert_eq!(dom.names, vec!["feed", "search"]);
    assert_eq!(dom.ids, vec![1, 0]);
    let msg = err_text(pre.load_file(&dir.0.join("valid.csv")));
    assert!(msg.contains("valid.csv: line 3, column `scene`"), "{msg}");
    assert!(
        msg.contains("domain `mall` was not in the training data (known: `feed`, `search`)"),
        "{msg}"
    );

    dir.write("missing.csv", "city,age,scene,click\nparis,30,,1\n");
    let msg = err_text(fit(&dir, &schema, &tasks, "missing.csv"));
    assert!(
        msg.contains("missing.csv: line 2, column `scene`: the domain is missing"),
        "{msg}"
    );
}

/// A domain column can also be read as a sparse feature (one column, two
/// roles): ids of the field and domain ids of the same rows.
#[test]
fn the_domain_column_can_also_be_a_sparse_feature() {
    let dir = TempDir::new("domain-feature");
    dir.write(
        "train.csv",
        "city,age,scene,click\nparis,30,search,1\nrome,40,feed,0\nparis,50,feed,1\n",
    );
    let (mut schema, tasks) = config(&BASIC.replace("sparse = [\"city\"]", "sparse = [\"city\", \"scene\"]"));
    schema.domain = Some("scene".into());
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("load");
    assert_eq!(d.domains.as_ref().expect("domains").ids, vec![1, 0, 0]);
    let sparse = d.sparse.as_ref().expect("sparse");
    assert_eq!(sparse.fields, ["city", "scene"]);
    let scene: Vec<u32> = (0..3).map(|r| sparse.ids[r * 2 + 1]).collect();
    assert_eq!(scene[1], scene[2], "one value, one id");
    assert_ne!(scene[0], scene[1], "two values, two ids");
    assert!(scene.iter().all(|&i| i > 0), "seen values are not OOV: {scene:?}");
    // As a dense column it is still a mistake.
    let (mut schema, tasks) = config(&BASIC.replace("dense = [\"age\"]", "dense = [\"age\", \"scene\"]"));
    schema.domain = Some("scene".into());
    let msg = err_text(schema.check(&tasks));
    assert!(
        msg.contains("column `scene` is listed twice (in `dense` and `domain`)"),
        "{msg}"
    );
}

#[test]
fn unused_columns_are_errors_unless_ignored() {
    let dir = TempDir::new("unused");
    dir.write("train.csv", "id,city,age,click,note\n1,paris,30,1,x\n");
    let (mut schema, tasks) = config(BASIC);
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("train.csv: line 1, column `id`"), "{msg}");
    assert!(msg.contains("columns not used by the schema: `id`, `note`"), "{msg}");
    schema.ignore = vec!["id".into(), "note".into(), "only-in-predict-files".into()];
    fit(&dir, &schema, &tasks, "train.csv").expect("ignored");
    schema.ignore = vec!["id".into()];
    schema.ignore_rest = true;
    fit(&dir, &schema, &tasks, "train.csv").expect("ignore_rest");
}

#[test]
fn parquet_errors_name_the_row() {
    let dir = TempDir::new("parquet-errors");
    let path = dir.0.join("train.parquet");
    write_parquet(
        &path,
        &[
            vec![Some("paris"), Some("rome")],
            vec![Some("30"), Some("old")],
            vec![Some("1"), Some("0")],
        ],
        &["city", "age", "click"],
        &[],
        &[],
    );
    let (schema, tasks) = config(BASIC);
    let msg = err_text(Preprocessor::fit(&schema, &tasks, &path, None));
    assert!(
        msg.contains("train.parquet: row 2, column `age`: cannot read `old` as a number"),
        "{msg}"
    );

    dir.write("not.parquet", "city,age\n");
    let msg = err_text(Preprocessor::fit(&schema, &tasks, &dir.0.join("not.parquet"), None));
    assert!(msg.contains("not.parquet: cannot read as Parquet"), "{msg}");
}

#[test]
fn schema_mistakes_are_caught_before_reading() {
    let parse = |text: &str| toml::from_str::<Config>(text).map(|_| ()).map_err(|e| e.to_string());
    let msg = parse("[data]\nsparse = [{ name = \"a\", min_cout = 2 }]").expect_err("typo");
    assert!(msg.contains("min_cout"), "{msg}");
    let msg = parse("[data]\nsparce = [\"a\"]").expect_err("typo");
    assert!(msg.contains("sparce"), "{msg}");
    let msg = parse("[data]\nseparator = \";;\"").expect_err("bad separator");
    assert!(msg.contains("must be a single character"), "{msg}");
    let msg = parse("[data]\n[[tasks]]\nname = \"t\"\nkind = \"binary\"\nlabel = { column = \"c\", eq = 1 }")
        .expect_err("typo in rule");
    assert!(msg.contains("eq"), "{msg}");

    let (schema, tasks) = config(
        r#"
[data]
sparse = ["city", "click"]
[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#,
    );
    let msg = err_text(schema.check(&tasks));
    assert!(
        msg.contains("column `click` is task `click`'s label and also an input (`sparse`)"),
        "{msg}"
    );

    let (schema, tasks) = config(
        r#"
[data]
sparse = ["city"]
sequence = [{ name = "tags", share_with = "town" }]
[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#,
    );
    let msg = err_text(schema.check(&tasks));
    assert!(msg.contains("`share_with = \"town\"` names no sparse field"), "{msg}");

    let (schema, tasks) = config(
        r#"
[data]
dense = ["age"]
[[tasks]]
name = "spend"
kind = "regression"
label = { column = "spend", above = 3 }
"#,
    );
    let msg = err_text(schema.check(&tasks));
    assert!(msg.contains("task `spend` is a regression"), "{msg}");

    let (schema, _) = config("[data]\nsparse = [{ name = \"a\", min_count = 2, hash_buckets = 8 }]");
    let msg = err_text(schema.check(&[]));
    assert!(msg.contains("exclude each other"), "{msg}");
}

// ---------------------------------------------------------------- vocabulary

#[test]
fn vocabulary_min_count_and_oov() {
    let dir = TempDir::new("vocab");
    dir.write(
        "train.csv",
        "city,age,click\nparis,1,1\nrome,2,0\nparis,3,1\nlyon,4,0\nrome,5,1\n?,6,0\n,7,1\nparis,8,0\n",
    );
    dir.write("valid.csv", "city,age,click\nlyon,1,1\nberlin,2,0\nrome,3,1\n?,4,0\n");
    let (mut schema, tasks) = config(BASIC);
    schema.sparse[0].min_count = Some(2);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let Encoding::Vocab { vocab } = &pre.sparse[0].encoding else {
        panic!("vocabulary expected")
    };
    // Most frequent first: paris (3), rome (2); lyon (1) is rare.
    assert_eq!(vocab.values(), ["paris", "rome"]);
    assert_eq!(vocab.counts(), [3, 2]);
    assert_eq!(vocab.oov_count(), 3, "lyon + two missing");
    assert_eq!(vocab.size(), 3);

    let valid = pre.load_file(&dir.0.join("valid.csv")).expect("valid");
    let sparse = valid.sparse.as_ref().expect("sparse");
    assert_eq!(sparse.vocab, vec![3]);
    // lyon rare -> 0, berlin unseen -> 0, rome -> 2, missing -> 0.
    assert_eq!(sparse.ids, vec![0, 0, 2, 0]);

    // Default min_count 1 keeps lyon.
    schema.sparse[0].min_count = None;
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    assert_eq!(pre.features().sparse[0].vocab, 4);
    assert_eq!(pre.features().sparse[0].dim, 4);
    let valid = pre.load_file(&dir.0.join("valid.csv")).expect("valid");
    assert_eq!(valid.sparse.as_ref().expect("sparse").ids, vec![3, 0, 2, 0]);
}

#[test]
fn hashing_is_stable_and_in_range() {
    // FNV-1a 64 test vectors: the ids can never change.
    assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(stable_hash("foobar"), 0x8594_4171_f739_67e8);

    let dir = TempDir::new("hash");
    dir.write("train.csv", "city,age,click\nparis,1,1\nrome,2,0\n,3,1\n");
    dir.write("valid.csv", "city,age,click\nberlin,1,1\nparis,2,0\n");
    let (mut schema, tasks) = config(BASIC);
    schema.sparse[0].hash_buckets = Some(7);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    assert_eq!(pre.sparse[0].encoding, Encoding::Hash { buckets: 7 });
    let id = |v: &str| 1 + (stable_hash(v) % 7) as u32;
    let train = pre.load_file(&dir.0.join("train.csv")).expect("train");
    assert_eq!(
        train.sparse.as_ref().expect("sparse").ids,
        vec![id("paris"), id("rome"), 0]
    );
    let valid = pre.load_file(&dir.0.join("valid.csv")).expect("valid");
    let s = valid.sparse.as_ref().expect("sparse");
    assert_eq!(s.ids, vec![id("berlin"), id("paris")]);
    assert_eq!(s.vocab, vec![8]);
    // A second fit, and the saved state, give the same ids.
    let again = Preprocessor::from_json(&pre.to_json().expect("json")).expect("json");
    assert_eq!(again.load_file(&dir.0.join("valid.csv")).expect("valid"), valid);
}

// ---------------------------------------------------------------- dense

#[test]
fn scaling_is_fitted_on_train_rows_only() {
    let dir = TempDir::new("scaling");
    dir.write(
        "train.csv",
        "a,b,c,d,click\n1,10,0,5,1\n2,20,,5,0\n3,30,e,5,1\n?,40,2,5,0\n",
    );
    dir.write("valid.csv", "a,b,c,d,click\n100,-1000,9,?,1\n");
    let (schema, tasks) = config(
        r#"
[data]
dense = [{ name = "a", scaling = "standard" }, "b", { name = "c", scaling = "signed-log", fill = -5 }, { name = "d", scaling = "none" }]
[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#,
    );
    // `e` is not a number.
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(
        msg.contains("train.csv: line 4, column `c`: cannot read `e` as a number"),
        "{msg}"
    );
    dir.write(
        "train.csv",
        "a,b,c,d,click\n1,10,0,5,1\n2,20,,5,0\n3,30,NaN,5,1\n?,40,2,5,0\n",
    );
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let a = &pre.dense[0];
    assert_eq!((a.count, a.mean, a.min, a.max), (3, 2.0, 1.0, 3.0));
    assert!((a.std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(a.fill, 2.0, "fill defaults to the training mean");
    let b = &pre.dense[1];
    assert_eq!((b.min, b.max, b.fill), (10.0, 40.0, 25.0));
    assert_eq!(pre.dense[2].fill, -5.0);

    let train = pre.load_file(&dir.0.join("train.csv")).expect("train");
    let v = &train.dense.as_ref().expect("dense").values;
    let sd = (2.0f32 / 3.0).sqrt();
    let expect = [
        [-1.0 / sd, 0.0, 0.0, 5.0],
        [0.0, 1.0 / 3.0, -(6.0f32.ln()), 5.0],      // c missing -> -5 -> -ln(1 + 5)
        [1.0 / sd, 2.0 / 3.0, -(6.0f32.ln()), 5.0], // NaN is missing
        [0.0, 1.0, 3.0f32.ln(), 5.0],               // a missing -> mean 2 -> 0
    ];
    for (r, row) in expect.iter().enumerate() {
        for (k, want) in row.iter().enumerate() {
            assert!(
                (v[r * 4 + k] - want).abs() < 1e-6,
                "row {r} col {k}: {} vs {want}",
                v[r * 4 + k]
            );
        }
    }
    let before = pre.clone();
    let valid = pre.load_file(&dir.0.join("valid.csv")).expect("valid");
    assert_eq!(pre, before, "encoding never changes the statistics");
    let v = &valid.dense.as_ref().expect("dense").values;
    assert!((v[0] - 98.0 / sd).abs() < 1e-3, "{}", v[0]);
    assert!(
        (v[1] - (-1010.0 / 30.0)).abs() < 1e-4,
        "minmax is not clipped: {}",
        v[1]
    );
    assert!((v[2] - 10.0f32.ln()).abs() < 1e-6);
    assert_eq!(v[3], 5.0, "missing d -> its mean 5");

    // Refitting on train + valid would change them: the fit really saw train only.
    let both = "a,b,c,d,click\n1,10,0,5,1\n2,20,,5,0\n3,30,NaN,5,1\n?,40,2,5,0\n100,-1000,9,?,1\n";
    dir.write("both.csv", both);
    let wider = fit(&dir, &schema, &tasks, "both.csv").expect("fit");
    assert_ne!(wider.dense[0].mean, pre.dense[0].mean);
}

/// `log` is ln(1 + x) for x >= 0: a negative value is an error naming the
/// file, line and column (at fit, and in a later file), never clamped to 0;
/// a negative `fill` under `log` is refused before reading; `signed-log`
/// is sign(x) * ln(1 + |x|).
#[test]
fn log_scaling_refuses_negative_values_and_signed_log_takes_them() {
    let dir = TempDir::new("log-negative");
    let text = |scaling: &str, fill: &str| {
        format!(
            "[data]\ndense = [{{ name = \"v\", scaling = \"{scaling}\"{fill} }}]\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n"
        )
    };
    dir.write("train.csv", "v,click\n3,1\n0,0\n-2.5,1\n");
    let (schema, tasks) = config(&text("log", ""));
    let msg = err_text(fit(&dir, &schema, &tasks, "train.csv"));
    assert!(msg.contains("train.csv: line 4, column `v`: -2.5 is negative"), "{msg}");
    assert!(msg.contains("signed-log") && msg.contains("ln(1 + x)"), "{msg}");

    // Fitted on non-negative rows, a negative value in another file.
    dir.write("good.csv", "v,click\n3,1\n0,0\n");
    let pre = fit(&dir, &schema, &tasks, "good.csv").expect("fit");
    dir.write("valid.csv", "v,click\n1,1\n\n-7,0\n");
    let msg = err_text(pre.load_file(&dir.0.join("valid.csv")));
    assert!(msg.contains("valid.csv: line 4, column `v`: -7 is negative"), "{msg}");
    let ok = pre.load_file(&dir.0.join("good.csv")).expect("good");
    let v = &ok.dense.as_ref().expect("dense").values;
    assert_eq!(v, &[4.0f32.ln(), 0.0]);

    let (schema, tasks) = config(&text("log", ", fill = -1"));
    let msg = err_text(fit(&dir, &schema, &tasks, "good.csv"));
    assert!(msg.contains("dense `v`: `fill` = -1 is negative"), "{msg}");

    let (schema, tasks) = config(&text("signed-log", ""));
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("train");
    let v = &d.dense.as_ref().expect("dense").values;
    let want = [4.0f32.ln(), 0.0, -(3.5f32.ln())];
    for (got, want) in v.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // Saved and read back under its config name.
    assert!(pre.to_json().expect("json").contains("\"signed-log\""));
}

/// Task names name graph nodes (`tower-<task>`): what a node id allows
/// (ASCII letters, digits, `_`, `-`) and nothing else, with a suggestion.
#[test]
fn task_names_allow_what_node_ids_allow() {
    let task = |name: &str| TaskSpec {
        name: name.into(),
        ..config(BASIC).1.remove(0)
    };
    for ok in ["click", "ctr-1_b", "A9"] {
        task(ok).check_name().unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, suggestion) in [
        ("my task", "my_task"),
        ("clické", "click_"),
        ("a.b", "a_b"),
        ("", "task_1"),
    ] {
        let e = task(bad).check_name().expect_err(bad);
        assert!(matches!(&e, DataError::TaskName { name, .. } if name == bad), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("ASCII letters, digits, `_` and `-`"), "{msg}");
        assert!(msg.contains(&format!("e.g. `{suggestion}`")), "{msg}");
    }
    // The schema check applies it too.
    let (schema, _) = config(BASIC);
    let msg = err_text(schema.check(&[task("my task")]));
    assert!(msg.contains("task name `my task`"), "{msg}");
}

/// Per task, labelled rows and positives, over chosen rows or all.
#[test]
fn label_counts_per_task() {
    let dir = TempDir::new("label-counts");
    dir.write(
        "train.csv",
        "city,age,click\nparis,30,1\nrome,40,0\nparis,50,1\nnice,1,?\n",
    );
    let (schema, tasks) = config(BASIC);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("load");
    let all = d.label_counts(None).expect("all");
    assert_eq!(
        (all[0].labelled, all[0].positives),
        (3, 2),
        "the missing label is not labelled"
    );
    assert!(all[0].both_classes());
    let some = d.label_counts(Some(&[0, 2, 3])).expect("some");
    assert_eq!((some[0].labelled, some[0].positives), (2, 2));
    assert!(!some[0].both_classes());
    assert!(d.label_counts(Some(&[9])).is_err());
}

// ---------------------------------------------------------------- sequences

#[test]
fn sequences_pad_truncate_and_share() {
    let dir = TempDir::new("sequences");
    dir.write(
        "train.csv",
        "item;hist;tags;click\na;a|b;x,y;1\nb;b| c |a|a;y;0\nc;;x,x,x,z,y;1\n",
    );
    dir.write("valid.csv", "item;hist;tags;click\nd;d|a;q,x;1\n");
    let (schema, tasks) = config(
        r#"
[data]
separator = ";"
sparse = ["item"]
sequence = [
  { name = "hist", max_len = 3, share_with = "item", pooling = "sum" },
  { name = "tags", separator = ",", max_len = 4, dim = 3 },
]
[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#,
    );
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    // item vocab: a, b, c (1 each, ties by value); hist shares it.
    let train = pre.load_file(&dir.0.join("train.csv")).expect("train");
    assert_eq!(train.sparse.as_ref().expect("sparse").ids, vec![1, 2, 3]);
    let hist = &train.sequences[0];
    assert_eq!(hist.name, "hist");
    assert_eq!((hist.max_len, hist.vocab), (3, 4));
    assert_eq!(hist.share_with.as_deref(), Some("item"));
    // "a|b" -> [1,2,0]; "b| c |a|a" -> truncated to [2,3,1]; "" -> empty.
    assert_eq!(hist.ids, vec![1, 2, 0, 2, 3, 1, 0, 0, 0]);
    assert_eq!(hist.lengths, vec![2, 3, 0]);
    // tags: own vocabulary over tokens: x (4), y (3), z (1).
    let tags = &train.sequences[1];
    assert_eq!(tags.vocab, 4);
    assert_eq!(tags.ids, vec![1, 2, 0, 0, 2, 0, 0, 0, 1, 1, 1, 3]);
    assert_eq!(tags.lengths, vec![2, 1, 4]);
    assert_eq!(pre.sequences[0].dim, 4, "a shared sequence takes the field's width");
    assert_eq!(pre.sequences[1].dim, 3);

    // Unseen tokens map to 0 but count in the length.
    let valid = pre.load_file(&dir.0.join("valid.csv")).expect("valid");
    assert_eq!(valid.sequences[0].ids, vec![0, 1, 0]);
    assert_eq!(valid.sequences[0].lengths, vec![2]);
    assert_eq!(valid.sequences[1].ids, vec![0, 1, 0, 0]);

    // Subsets and batches: sequences are gathered by subset, left out of batches.
    let sub = train.subset(&[2, 0]);
    assert_eq!(sub.sequences[0].ids, vec![0, 0, 0, 1, 2, 0]);
    assert_eq!(sub.sequences[0].lengths, vec![0, 2]);
    let batch = train.batch(&[0, 1], &candle_core::Device::Cpu).expect("batch");
    assert_eq!(batch.rows(), 2);
}

#[test]
fn dataset_sequences_are_checked_and_concatenated() {
    let dir = TempDir::new("seq-dataset");
    dir.write("train.csv", "item,hist,click\na,a|b,1\nb,b,0\n");
    let (schema, tasks) = config(
        r#"
[data]
sparse = ["item"]
sequence = [{ name = "hist", max_len = 2, share_with = "item" }]
[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#,
    );
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("load");
    let both = Dataset::concat(&[d.clone(), d.clone()]).expect("concat");
    assert_eq!(both.rows(), 4);
    assert_eq!(both.sequences[0].ids, vec![1, 2, 2, 0, 1, 2, 2, 0]);
    assert_eq!(both.subset(&[0, 1]), d);

    let mut bad = d.sequences.clone();
    bad[0].ids[3] = 1; // past row 1's length 1
    let msg = err_text(d.clone().with_sequences(bad));
    assert!(msg.contains("non-zero ids past its length 1"), "{msg}");
    let mut bad = d.sequences.clone();
    bad[0].ids[0] = 9;
    let msg = err_text(d.clone().with_sequences(bad));
    assert!(
        msg.contains("sequence id 9 of `hist` at row 0 is out of range"),
        "{msg}"
    );
    let mut other = d.clone();
    other.sequences.clear();
    let msg = err_text(Dataset::concat(&[d, other]));
    assert!(msg.contains("part 1 differs"), "{msg}");
}

// ---------------------------------------------------------------- formats

type Lists<'a> = [(&'a str, Vec<Vec<&'a str>>)];
type Doubles<'a> = [(&'a str, Vec<Option<f64>>)];

/// Writes string columns (None = null) as a Parquet file, snappy-compressed,
/// then `doubles` as DOUBLE columns and `lists` (name, rows of elements) as
/// LIST<string> columns.
fn write_parquet(path: &Path, columns: &[Vec<Option<&str>>], names: &[&str], doubles: &Doubles<'_>, lists: &Lists<'_>) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let mut message = String::from("message rows {\n");
    for n in names {
        message.push_str(&format!("  optional binary {n} (UTF8);\n"));
    }
    for (n, _) in doubles {
        message.push_str(&format!("  optional double {n};\n"));
    }
    for (n, _) in lists {
        message.push_str(&format!(
            "  optional group {n} (LIST) {{ repeated group list {{ optional binary element (UTF8); }} }}\n"
        ));
    }
    message.push('}');
    let schema = Arc::new(parse_message_type(&message).expect("parquet schema"));
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = std::fs::File::create(path).expect("create parquet");
    let mut writer = SerializedFileWriter::new(file, schema, props).expect("writer");
    let mut group = writer.next_row_group().expect("row group");
    for col in columns {
        let values: Vec<ByteArray> = col.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        let defs: Vec<i16> = col.iter().map(|v| i16::from(v.is_some())).collect();
        let mut w = group.next_column().expect("column").expect("a column");
        w.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .expect("write");
        w.close().expect("close column");
    }
    for (_, col) in doubles {
        let values: Vec<f64> = col.iter().flatten().copied().collect();
        let defs: Vec<i16> = col.iter().map(|v| i16::from(v.is_some())).collect();
        let mut w = group.next_column().expect("column").expect("a column");
        w.typed::<DoubleType>()
            .write_batch(&values, Some(&defs), None)
            .expect("write");
        w.close().expect("close column");
    }
    for (_, rows) in lists {
        let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            if row.is_empty() {
                defs.push(1); // an empty list
                reps.push(0);
            }
            for (i, e) in row.iter().enumerate() {
                values.push(ByteArray::from(*e));
                defs.push(3);
                reps.push(i16::from(i > 0));
            }
        }
        let mut w = group.next_column().expect("column").expect("a column");
        w.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), Some(&reps))
            .expect("write list");
        w.close().expect("close column");
    }
    group.close().expect("close row group");
    writer.close().expect("close file");
}

#[test]
fn parquet_and_gzip_csv_give_identical_datasets() {
    let dir = TempDir::new("formats");
    let csv = "city,age,score,scene,tags,click,spend\n\
               paris,30,0.25,feed,a|b,1,1.5\n\
               rome,,1.5,search,,0,2\n\
               paris,50,-2,feed,c,1,\n\
               ?,41,3.75,feed,a|c|a,0,0.5\n";
    dir.write("train.csv.gz", csv);
    let cols: Vec<Vec<Option<&str>>> = vec![
        vec![Some("paris"), Some("rome"), Some("paris"), None],
        vec![Some("30"), None, Some("50"), Some("41")],
        vec![Some("feed"), Some("search"), Some("feed"), Some("feed")],
        vec![Some("1"), Some("0"), Some("1"), Some("0")],
    ];
    let doubles = [
        ("score", vec![Some(0.25), Some(1.5), Some(-2.0), Some(3.75)]),
        ("spend", vec![Some(1.5), Some(2.0), None, Some(0.5)]),
    ];
    let lists = [("tags", vec![vec!["a", "b"], vec![], vec!["c"], vec!["a", "c", "a"]])];
    let pq = dir.0.join("train.parquet");
    write_parquet(&pq, &cols, &["city", "age", "scene", "click"], &doubles, &lists);

    let (schema, tasks) = config(
        r#"
[data]
sparse = ["city"]
dense = ["age", { name = "score", scaling = "standard" }]
sequence = [{ name = "tags", max_len = 3 }]
domain = "scene"
[[tasks]]
name = "click"
kind = "binary"
label = "click"
[[tasks]]
name = "spend"
kind = "regression"
label = "spend"
mask = { column = "scene", equals = "feed" }
"#,
    );
    let from_csv = Preprocessor::fit(&schema, &tasks, &dir.0.join("train.csv.gz"), None).expect("csv fit");
    let from_pq = Preprocessor::fit(&schema, &tasks, &pq, None).expect("parquet fit");
    assert_eq!(from_csv.sparse, from_pq.sparse);
    assert_eq!(from_csv.dense, from_pq.dense);
    assert_eq!(from_csv.sequences, from_pq.sequences);
    assert_eq!(from_csv.domain, from_pq.domain);
    let a = from_csv.load_file(&dir.0.join("train.csv.gz")).expect("csv");
    let b = from_pq.load_file(&pq).expect("parquet");
    assert_eq!(a, b);
    // One preprocessor reads both formats alike.
    assert_eq!(from_csv.load_file(&pq).expect("parquet"), a);
    assert_eq!(a.rows(), 4);
    assert_eq!(a.sequences[0].lengths, vec![2, 0, 1, 3]);
    // Task `spend`: where scene == feed and spend is present.
    assert_eq!(a.masks, vec![1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]);
    assert_eq!(a.labels, vec![1.0, 1.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5]);
}

#[test]
fn separators_comma_space_and_non_ascii() {
    let dir = TempDir::new("separators");
    dir.write("census.data", "paris, 30, 1\nrome , 40,0\n");
    dir.write("pipe.txt", "city¦age¦click\nparis¦30¦1\nrome¦40¦0\n");
    let (mut schema, tasks) = config(BASIC);
    schema.header = false;
    schema.columns = Some(vec!["city".into(), "age".into(), "click".into()]);
    schema.separator = Separator::CommaSpace;
    let pre = fit(&dir, &schema, &tasks, "census.data").expect("fit");
    let Encoding::Vocab { vocab } = &pre.sparse[0].encoding else {
        panic!("vocab")
    };
    assert_eq!(vocab.values(), ["paris", "rome"], "fields are trimmed");
    let a = pre.load_file(&dir.0.join("census.data")).expect("load");

    let (mut schema, tasks) = config(BASIC);
    schema.separator = Separator::try_from("¦".to_string()).expect("one char");
    assert_eq!(schema.separator, Separator::Char('¦'));
    let pre2 = fit(&dir, &schema, &tasks, "pipe.txt").expect("fit");
    assert_eq!(pre2.load_file(&dir.0.join("pipe.txt")).expect("load"), a);
}

// ---------------------------------------------------------------- API

#[test]
fn saved_preprocessor_encodes_alike() {
    let dir = TempDir::new("json");
    dir.write("train.csv", "city,age,scene,click\nparis,30,a,1\nrome,40,b,0\n");
    dir.write("new.csv", "city,age,scene,click\nberlin,35,b,1\n");
    let (mut schema, tasks) = config(BASIC);
    schema.domain = Some("scene".into());
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let file = dir.0.join("preprocess.json");
    pre.save(&file).expect("save");
    let loaded = Preprocessor::load(&file).expect("load");
    assert_eq!(loaded, pre);
    assert_eq!(
        loaded.load_file(&dir.0.join("new.csv")).expect("new"),
        pre.load_file(&dir.0.join("new.csv")).expect("new")
    );
    std::fs::write(&file, "{}").expect("write");
    let msg = err_text(Preprocessor::load(&file));
    assert!(msg.contains("preprocess.json: cannot read a preprocessor"), "{msg}");
}

#[test]
fn prediction_files_may_lack_labels() {
    let dir = TempDir::new("unlabelled");
    dir.write("train.csv", BASIC_CSV);
    dir.write("predict.csv", "city,age\nparis,35\n");
    let (schema, tasks) = config(BASIC);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let msg = err_text(pre.load_file(&dir.0.join("predict.csv")));
    assert!(msg.contains("column `click`"), "{msg}");
    let d = pre
        .encode_file(&dir.0.join("predict.csv"), Labels::Optional, None)
        .expect("unlabelled");
    assert_eq!((d.rows(), d.masks.clone()), (1, vec![0.0]));
}

#[test]
fn chunks_cover_the_file_in_order() {
    let dir = TempDir::new("chunks");
    dir.write("train.csv", "city,age,click\na,1,1\nb,2,0\na,3,1\nc,4,0\nb,5,1\n");
    let (schema, tasks) = config(BASIC);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let whole = pre.load_file(&dir.0.join("train.csv")).expect("whole");
    let chunks: Vec<Dataset> = pre
        .encode_chunks(&dir.0.join("train.csv"), 2, Labels::Required)
        .collect::<Result<_, _>>()
        .expect("chunks");
    assert_eq!(chunks.iter().map(Dataset::rows).collect::<Vec<_>>(), vec![2, 2, 1]);
    assert_eq!(Dataset::concat(&chunks).expect("concat"), whole);

    // A bad row ends the chunks with an error.
    dir.write("bad.csv", "city,age,click\na,1,1\nb,2,0\na,x,1\n");
    let items: Vec<_> = pre.encode_chunks(&dir.0.join("bad.csv"), 2, Labels::Required).collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    let msg = items[1].as_ref().map(|_| ()).expect_err("bad row").to_string();
    assert!(msg.contains("bad.csv: line 4, column `age`"), "{msg}");
    let items: Vec<_> = pre
        .encode_chunks(&dir.0.join("nope.csv"), 2, Labels::Required)
        .collect();
    assert_eq!(items.len(), 1);
    assert!(items[0].is_err());
}

#[test]
fn three_files_and_one_split_file() {
    let dir = TempDir::new("layouts");
    let mut all = String::from("city,age,click\n");
    for i in 0..30 {
        all.push_str(&format!("c{},{},{}\n", i % 4, i, i % 2));
    }
    dir.write("all.csv", &all);
    dir.write("train.csv", BASIC_CSV);
    dir.write("valid.csv", "city,age,click\nrome,35,1\n");
    dir.write("test.csv", "city,age,click\nlyon,45,0\nparis,20,1\n");
    let (mut schema, tasks) = config(BASIC);

    schema.dir = Some(PathBuf::from("sub"));
    schema.path = Some(PathBuf::from("all.csv"));
    assert_eq!(
        schema.resolve(Some(Path::new("/base"))).expect("resolve"),
        mtrec_data::DataFiles::Single {
            path: PathBuf::from("/base/sub/all.csv")
        }
    );
    schema.dir = None;
    let mut reports = Vec::new();
    let mut record = |p: &mtrec_data::Progress<'_>| reports.push((p.pass, p.rows));
    let single = load_single(&schema, &tasks, Some(&dir.0), [0.6, 0.2, 0.2], 3, Some(&mut record)).expect("single");
    assert_eq!(single.data.rows(), 30);
    assert_eq!(single.split.train.len(), 18);
    assert_eq!(single.preprocessor.train_rows, 18, "fitted on the train rows only");
    assert_eq!(single.preprocessor.dense[0].count, 18);
    assert!(reports.contains(&(Pass::Count, 30)) && reports.contains(&(Pass::Fit, 30)));
    assert!(reports.contains(&(Pass::Encode, 30)));
    // The dense min/max come from the train rows' ages.
    let train_ages: Vec<f64> = single.split.train.iter().map(|&i| i as f64).collect();
    let min = train_ages.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(single.preprocessor.dense[0].min, min);
    let msg = err_text(load_tabular(&schema, &tasks, Some(&dir.0), None));
    assert!(msg.contains("one `path`"), "{msg}");

    schema.path = None;
    schema.train = Some("train.csv".into());
    schema.valid = Some("valid.csv".into());
    let msg = err_text(schema.resolve(None));
    assert!(msg.contains("test missing"), "{msg}");
    schema.test = Some(dir.0.join("test.csv")); // absolute stays as is
    let loaded = load_tabular(&schema, &tasks, Some(&dir.0), None).expect("three files");
    assert_eq!(
        (loaded.train.rows(), loaded.valid.rows(), loaded.test.rows()),
        (3, 1, 2)
    );
    let one = load_split(&schema, &tasks, Some(&dir.0), [0.8, 0.1, 0.1], 1, None).expect("combined");
    assert_eq!(one.data.rows(), 6);
    assert_eq!(one.split.valid, vec![3]);
    assert_eq!(one.split.test, vec![4, 5]);
    assert_eq!(one.data.subset(&one.split.test), loaded.test);
    assert_eq!(loaded.preprocessor.task_infos()[0].kind, TaskKind::Binary);
}

#[test]
fn errors_are_typed() {
    let dir = TempDir::new("typed");
    dir.write("train.csv", "city,age,click\nparis,x,1\n");
    let (schema, tasks) = config(BASIC);
    match fit(&dir, &schema, &tasks, "train.csv") {
        Err(DataError::Input { place, column, .. }) => {
            assert_eq!(place, Place::Line(2));
            assert_eq!(column.as_deref(), Some("age"));
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- streaming

/// The dense `age` of every row of `batches`, in order.
fn ages(batches: impl Iterator<Item = Result<Dataset, DataError>>) -> Vec<f32> {
    let mut out = Vec::new();
    for b in batches {
        let b = b.expect("batch");
        assert!(b.rows() <= 8, "batches of at most batch_size rows");
        out.extend(b.dense.as_ref().expect("dense").values.iter().copied());
    }
    out
}

#[test]
fn streamed_gzip_csv_and_parquet_give_every_row_once() {
    use mtrec_data::{Part, StreamFiles, StreamOptions, StreamedData};
    let dir = TempDir::new("streamed");
    let n = 300;
    let cities = ["a", "b", "c"];
    let mut csv = String::from("city,age,click\n");
    let (mut city_col, mut age_col, mut click_col) = (Vec::new(), Vec::new(), Vec::new());
    let text: Vec<(String, String)> = (0..n).map(|i| (i.to_string(), (i % 2).to_string())).collect();
    for (i, (age, click)) in text.iter().enumerate() {
        csv.push_str(&format!("{},{age},{click}\n", cities[i % 3]));
        city_col.push(Some(cities[i % 3]));
        age_col.push(Some(age.as_str()));
        click_col.push(Some(click.as_str()));
    }
    let gz = dir.write("train.csv.gz", &csv);
    let pq = dir.0.join("valid.parquet");
    write_parquet(
        &pq,
        &[city_col, age_col, click_col],
        &["city", "age", "click"],
        &[],
        &[],
    );
    let (mut schema, tasks) = config(BASIC);
    schema.defaults.scaling = mtrec_data::schema::Scaling::None;
    let pre = Preprocessor::fit(&schema, &tasks, &gz, None).expect("fit");
    let whole = pre.load_file(&gz).expect("whole file");
    let options = StreamOptions {
        chunk_rows: 16,
        shuffle_buffer: 40,
    };
    let files = StreamFiles::Separate {
        train: gz.clone(),
        valid: pq.clone(),
        test: gz.clone(),
    };
    let data = StreamedData::new(pre.clone(), files, options).expect("streamed");
    let in_order: Vec<f32> = (0..n).map(|i| i as f32).collect();
    // In file order, both formats give the file's rows; as datasets too.
    assert_eq!(ages(data.batches(Part::Train, 8, None)), in_order);
    assert_eq!(ages(data.batches(Part::Valid, 8, None)), in_order);
    let batches: Vec<Dataset> = data
        .batches(Part::Train, 8, None)
        .collect::<Result<_, _>>()
        .expect("batches");
    assert_eq!(Dataset::concat(&batches).expect("concat"), whole);
    // Shuffled: every row once, seeded, within chunk + buffer + batch rows.
    for part in [Part::Train, Part::Valid] {
        let a = ages(data.batches(part, 8, Some(5)));
        assert_ne!(a, in_order, "{part}: shuffled");
        assert_eq!(a, ages(data.batches(part, 8, Some(5))), "{part}: seeded");
        let mut sorted = a.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, in_order, "{part}: every row exactly once");
    }
    assert!(data.peak_rows() <= 16 + 40 + 8, "peak {}", data.peak_rows());
    assert!(data.peak_rows() >= 40, "peak {}", data.peak_rows());

    // One file: the hash split's parts are disjoint and cover it; the
    // preprocessor is fitted on the train part only.
    let mut single = schema.clone();
    single.path = Some(gz.clone());
    let data = StreamedData::open(&single, &tasks, None, [0.6, 0.2, 0.2], 9, options, None).expect("open");
    let parts: Vec<Vec<f32>> = [Part::Train, Part::Valid, Part::Test]
        .iter()
        .map(|&p| ages(data.batches(p, 8, None)))
        .collect();
    assert!(
        parts.iter().all(|p| p.len() > 30),
        "{:?}",
        parts.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(data.preprocessor.train_rows, parts[0].len() as u64);
    let mut all: Vec<f32> = parts.concat();
    all.sort_by(f32::total_cmp);
    assert_eq!(all, in_order);

    // A part the hash split leaves empty is an error naming the part.
    let mut tiny = schema.clone();
    tiny.path = Some(dir.write("tiny.csv", "city,age,click\na,1,1\nb,2,0\n"));
    let data = StreamedData::open(&tiny, &tasks, None, [0.98, 0.01, 0.01], 1, options, None).expect("open");
    let msg = err_text(data.chunks(Part::Valid).collect::<Result<Vec<_>, _>>());
    assert!(
        msg.contains("tiny.csv") && msg.contains("none of the file's 2 rows falls in the valid part"),
        "{msg}"
    );

    // Bad sizes are errors naming the setting.
    let bad = StreamOptions {
        chunk_rows: 16,
        shuffle_buffer: 0,
    };
    let msg = err_text(StreamedData::open(&single, &tasks, None, [0.6, 0.2, 0.2], 9, bad, None));
    assert!(
        msg.contains("`shuffle_buffer` = 0") && msg.contains("at least 1"),
        "{msg}"
    );
}

/// One task of a two-task preprocessing is what the one-task config fits
/// (the other task's label column ignored), and it encodes a file as the
/// two-task one does, keeping only its own labels.
#[test]
fn only_task_is_the_one_task_config() {
    let dir = TempDir::new("only-task");
    dir.write(
        "train.csv",
        "city,age,click,buy\nparis,30,1,0\nrome,40,0,1\nparis,50,1,1\n",
    );
    let two = format!("{BASIC}\n[[tasks]]\nname = \"buy\"\nkind = \"binary\"\nlabel = \"buy\"\n");
    let (schema, tasks) = config(&two);
    let both = fit(&dir, &schema, &tasks, "train.csv").expect("fit two tasks");
    let (schema, tasks) = config(&BASIC.replace("dense = [\"age\"]", "dense = [\"age\"]\nignore = [\"buy\"]"));
    let click = fit(&dir, &schema, &tasks, "train.csv").expect("fit click alone");
    assert_eq!(both.only_task(0).expect("task 0"), click);
    assert!(both.only_task(2).is_none());

    let path = dir.0.join("train.csv");
    let whole = both.load_file(&path).expect("encode with both");
    let buy = both.only_task(1).expect("task 1");
    assert_eq!(buy.ignore, ["click"]);
    let alone = buy.load_file(&path).expect("encode with buy alone");
    assert_eq!(alone, whole.only_task(1).expect("column 1"));
    assert_eq!(alone.labels, [0.0, 1.0, 1.0]);
}

// ------------------------------------------------- group and weight columns

const GROUPED: &str = r#"
[data]
sparse = ["user", "city"]
dense = ["age"]
group = "user"
weight = "w"

[[tasks]]
name = "click"
kind = "binary"
label = "click"
"#;

#[test]
fn group_and_weight_columns_are_read_with_the_labels() {
    let dir = TempDir::new("group-weight");
    dir.write(
        "train.csv",
        "user,city,age,w,click\nu1,paris,30,2.5,1\nu2,rome,40,0,0\nu1,paris,50,1000,1\n",
    );
    dir.write("new.csv", "user,city,age,w,click\nu9,paris,30,1,1\nu8,rome,40,3,0\n");
    let (schema, tasks) = config(GROUPED);
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let d = pre.load_file(&dir.0.join("train.csv")).expect("load");
    let (u1, u2) = (stable_hash("u1"), stable_hash("u2"));
    assert_eq!(d.groups, Some(vec![u1, u2, u1]));
    assert_eq!(d.weights, Some(vec![2.5, 0.0, 1000.0]));
    // `user` is also a sparse feature.
    assert_eq!(d.sparse.as_ref().expect("sparse").fields, ["user", "city"]);
    // Users unseen in training share the OOV id as a feature, not a group.
    let n = pre.load_file(&dir.0.join("new.csv")).expect("new");
    let s = n.sparse.as_ref().expect("sparse");
    assert_eq!((s.ids[0], s.ids[2]), (0, 0));
    assert_eq!(n.groups, Some(vec![stable_hash("u9"), stable_hash("u8")]));
    // Chunks (streaming) carry them row by row; the saved state keeps them.
    let chunks: Vec<Dataset> = pre
        .encode_chunks(&dir.0.join("train.csv"), 2, Labels::Required)
        .collect::<Result<_, _>>()
        .expect("chunks");
    assert_eq!(Dataset::concat(&chunks).expect("concat"), d);
    let loaded = Preprocessor::from_json(&pre.to_json().expect("json")).expect("parse");
    assert_eq!(loaded.group.as_deref(), Some("user"));
    assert_eq!(loaded.weight.as_deref(), Some("w"));
    // Prediction files need neither column.
    dir.write("predict.csv", "user,city,age\nu1,paris,35\n");
    let p = pre
        .encode_file(&dir.0.join("predict.csv"), Labels::Optional, None)
        .expect("unlabelled");
    assert_eq!((p.groups.clone(), p.weights.clone()), (None, None));
    // Nor do they refuse a file that has them (a labelled file scored
    // again): the weight column is known to the schema, not unused.
    let again = pre
        .encode_file(&dir.0.join("new.csv"), Labels::Optional, None)
        .expect("a file with the weight column");
    assert_eq!((again.rows(), again.weights.clone()), (2, None));
    // A batch hands the weights over as a tensor, the groups as they are.
    let b = d.batch(&[2, 0], &candle_core::Device::Cpu).expect("batch");
    let w: Vec<f32> = b.weights.as_ref().expect("weights").to_vec1().expect("f32");
    assert_eq!(w, vec![1000.0, 2.5]);
    assert_eq!(b.groups, Some(vec![u1, u1]));
}

#[test]
fn bad_weights_and_missing_groups_name_file_line_and_column() {
    let dir = TempDir::new("bad-weight");
    let (schema, tasks) = config(GROUPED);
    for (row, what) in [
        ("-1", "weight -1 must be finite and >= 0"),
        ("inf", "weight: `inf` is not a finite number"),
        ("", "the weight is missing"),
        ("heavy", "weight: cannot read `heavy` as a number"),
        (
            "1e39",
            "weight 1000000000000000000000000000000000000000 must be finite and >= 0",
        ),
    ] {
        dir.write(
            "train.csv",
            &format!("user,city,age,w,click\nu1,paris,30,1,1\nu2,rome,40,{row},0\n"),
        );
        let msg = err_text(fit(&dir, &schema, &tasks, "train.csv").and_then(|p| p.load_file(&dir.0.join("train.csv"))));
        assert!(msg.contains("train.csv: line 3, column `w`"), "{row}: {msg}");
        assert!(msg.contains(what), "{row}: {msg}");
    }
    dir.write("train.csv", "user,city,age,w,click\nu1,paris,30,1,1\n?,rome,40,1,0\n");
    let pre = fit(&dir, &schema, &tasks, "train.csv").expect("fit");
    let msg = err_text(pre.load_file(&dir.0.join("train.csv")));
    assert!(msg.contains("train.csv: line 3, column `user`"), "{msg}");
    assert!(msg.contains("the group is missing"), "{msg}");
    // Both are required where labels are.
    dir.write("nogroup.csv", "city,age,w,click\nparis,30,1,1\n");
    let (mut schema2, tasks2) = config(GROUPED);
    schema2.sparse.retain(|f| f.name != "user");
    dir.write("t2.csv", "user,city,age,w,click\nu1,paris,30,1,1\n");
    let pre2 = fit(&dir, &schema2, &tasks2, "t2.csv").expect("fit");
    let msg = err_text(pre2.load_file(&dir.0.join("nogroup.csv")));
    assert!(
        msg.contains("column `user`") && msg.contains("group column is not in the file"),
        "{msg}"
    );
    // Ignoring the group or weight column is a contradiction.
    let (mut schema3, tasks3) = config(GROUPED);
    schema3.ignore = vec!["w".into()];
    let msg = err_text(schema3.check(&tasks3));
    assert!(
        msg.contains("column `w` is the `weight` column and also in `ignore`"),
        "{msg}"
    );
}
