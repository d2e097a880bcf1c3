//! Rows given in memory (`Preprocessor::encode_records`, what a served
//! request becomes) encode exactly as the same rows read from the file, for
//! every column kind; their errors name the row and the column.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mtrec_data::encode_row::{ColumnKind, StringRecord};
use mtrec_data::{DataError, Labels, Place, Preprocessor, TabularSchema, TaskSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    data: TabularSchema,
    tasks: Vec<TaskSpec>,
}

/// Headerless, `", "`-separated (values read trimmed), as census-income:
/// a vocabulary field, a hashed one, a log-scaled number with missing
/// values, a sequence with its own vocabulary, a domain, an ignored column.
const CONFIG: &str = r#"
[data]
header = false
separator = ", "
columns = ["city", "device", "spend", "hist", "site", "note", "click"]
sparse = ["city", { name = "device", hash_buckets = 50 }]
dense = [{ name = "spend", scaling = "log" }]
sequence = [{ name = "hist", separator = "|", max_len = 3 }]
domain = "site"
ignore = ["note"]

[[tasks]]
name = "click"
kind = "binary"
label = { column = "click" }
"#;

const TRAIN: &str = "paris, ios, 3.5, a|b, s1, x, 1\nrome, android, ?, b, s2, y, 0\nparis, web, 10, , s1, z, 1\n";
const TEST: &str = "rome, ios, 2, a|c|b|a, s2, x, 0\nlima, tv, ?, ?, s1, y, 1\nparis,  web , 0.25, b, s1, z, 0\n";

/// A file of its own per call: the tests run in parallel threads of one
/// process, and each removes its file when fitted.
fn temp(name: &str, text: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("mtrec-encode-row-{}-{n}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn fitted() -> Preprocessor {
    let c: Config = toml::from_str(CONFIG).unwrap();
    let train = temp("train.csv", TRAIN);
    let pre = Preprocessor::fit(&c.data, &c.tasks, &train, None).unwrap();
    std::fs::remove_file(train).ok();
    pre
}

/// A file line's fields in `input_columns` order (untrimmed, as given).
fn records(pre: &Preprocessor, text: &str) -> Vec<StringRecord> {
    let columns = ["city", "device", "spend", "hist", "site", "note", "click"];
    let order: Vec<usize> = pre
        .input_columns()
        .iter()
        .map(|c| columns.iter().position(|n| *n == c.name).unwrap())
        .collect();
    text.lines()
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            order.iter().map(|&i| fields[i]).collect()
        })
        .collect()
}

#[test]
fn records_encode_as_the_file_rows() {
    let pre = fitted();
    let kinds: Vec<(String, ColumnKind)> = pre.input_columns().into_iter().map(|c| (c.name, c.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("city", ColumnKind::Sparse),
            ("device", ColumnKind::Sparse),
            ("spend", ColumnKind::Dense),
            ("hist", ColumnKind::Sequence),
            ("site", ColumnKind::Domain)
        ]
        .map(|(n, k)| (n.to_string(), k))
    );
    assert_eq!(pre.passive_columns(), ["click", "note"]);
    assert!(pre.trims_values());

    let test = temp("test.csv", TEST);
    let from_file = pre.encode_file(&test, Labels::Optional, None).unwrap();
    std::fs::remove_file(test).ok();
    let from_records = pre.encode_records(Path::new("request"), records(&pre, TEST)).unwrap();
    assert_eq!(from_records.rows(), 3);
    assert_eq!(from_records.sparse, from_file.sparse);
    assert_eq!(from_records.dense, from_file.dense);
    assert_eq!(from_records.sequences, from_file.sequences);
    assert_eq!(from_records.domains, from_file.domains);
    // No labels are read from records.
    assert!(from_records.masks.iter().all(|&m| m == 0.0));
}

#[test]
fn record_errors_name_the_row_and_column() {
    let pre = fitted();
    let bad = "rome, ios, 2, a, s2, x, 0\nrome, ios, many, a, s2, x, 0\n";
    match pre.encode_records(Path::new("request"), records(&pre, bad)) {
        Err(DataError::Input {
            place, column, message, ..
        }) => {
            assert_eq!(place, Place::Row(2));
            assert_eq!(column.as_deref(), Some("spend"));
            assert!(message.contains("many"), "{message}");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    let unseen = "rome, ios, 2, a, s9, x, 0\n";
    match pre.encode_records(Path::new("request"), records(&pre, unseen)) {
        Err(DataError::Input {
            place, column, message, ..
        }) => {
            assert_eq!((place, column.as_deref()), (Place::Row(1), Some("site")));
            assert!(message.contains("`s9` was not in the training data"), "{message}");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}
