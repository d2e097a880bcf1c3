//! `mtrec compare` as a library call: single-task always present, per-domain
//! summaries for data with domains, Markdown, JSON and bar charts written.
#![allow(clippy::unwrap_used)]

use mtrec_runner::compare::{compare_and_write, SINGLE_TASK};
use mtrec_runner::config;
use mtrec_tests::{is_png, root};

#[test]
fn compare_adds_single_task_and_writes_per_domain_results_and_charts() {
    mtrec_runner::link_builtin_plugins();
    let sets = ["data.rows=900", "train.epochs=1", "train.conflict_every=0"].map(String::from);
    let base = config::load(&root().join("configs").join("star.toml"), &sets).unwrap();
    let dir = std::env::temp_dir().join(format!("mtrec-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let archs = ["shared-bottom".to_string()];
    let mut lines = Vec::new();
    let (cmp, written) =
        compare_and_write(&base, &archs, &[], &[1, 2], Some(&dir), |l| lines.push(l.to_string())).unwrap();

    // Single-task was not asked for: added first, and said so.
    let names: Vec<&str> = cmp.archs.iter().map(|a| a.arch.as_str()).collect();
    assert_eq!(names, [SINGLE_TASK, "shared-bottom"]);
    assert!(cmp.single_task_added);
    assert!(lines.iter().any(|l| l.contains("single-task added")), "{lines:?}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json["seeds"], serde_json::json!([1, 2]));
    for arch in json["archs"].as_array().unwrap() {
        let tasks = arch["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 2, "{arch}");
        assert!(tasks
            .iter()
            .all(|t| t["metric"] == "auc" && t["values"].as_array().unwrap().len() == 2));
        // star.toml's data: three domains, each with both tasks.
        let domains = arch["domains"].as_array().unwrap();
        assert_eq!(domains.len(), 3, "{arch}");
        for d in domains {
            assert!(d["domain"].as_str().is_some_and(|n| !n.is_empty()), "{d}");
            let cells = d["tasks"].as_array().unwrap();
            assert_eq!(cells.len(), 2, "{d}");
            // A small domain's test rows may hold one class in a seed (no
            // AUC): then fewer values, and `null` without any.
            for c in cells {
                let n = c["values"].as_array().unwrap().len();
                assert!(n <= 2, "{c}");
                assert_eq!(c["mean"].as_f64().is_some(), n > 0, "{c}");
            }
        }
        // The largest domain has both tasks measured in every seed.
        for c in domains[0]["tasks"].as_array().unwrap() {
            assert_eq!(c["values"].as_array().unwrap().len(), 2, "{c}");
        }
    }
    let md = std::fs::read_to_string(dir.join("compare.md")).unwrap();
    assert!(
        md.contains("click gain") && md.contains("Per domain") && md.contains("added as the reference"),
        "{md}"
    );

    for stem in ["compare-auc", "compare-domains-auc"] {
        let png = dir.join(format!("{stem}.png"));
        assert!(written.contains(&png), "{stem} not reported: {written:?}");
        assert!(is_png(&png), "{}", png.display());
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains(SINGLE_TASK), "{stem}.svg");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compare_keeps_a_requested_single_task_once() {
    mtrec_runner::link_builtin_plugins();
    let sets = ["data.rows=300", "data.dim=8", "train.epochs=1"].map(String::from);
    let base = config::load(&root().join("configs").join("mmoe.toml"), &sets).unwrap();
    let archs = ["mmoe", SINGLE_TASK].map(String::from);
    let (cmp, written) = compare_and_write(&base, &archs, &[], &[1], None, |_| {}).unwrap();
    let names: Vec<&str> = cmp.archs.iter().map(|a| a.arch.as_str()).collect();
    assert_eq!(names, ["mmoe", SINGLE_TASK]);
    assert!(!cmp.single_task_added && written.is_empty());
    // No domains in this data: no per-domain table.
    assert!(cmp.archs.iter().all(|a| a.domains.is_empty()));
    assert!(!cmp.markdown().contains("Per domain"));
    let err = compare_and_write(&base, &archs, &[], &[], None, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--seeds"), "{err}");
}
