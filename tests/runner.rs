//! The runner: configs, their errors, run folders.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mtrec_runner::config::{self, parse};
use mtrec_runner::run::{run, run_with, RunOptions};
use mtrec_tests::root;

fn parse_err(text: &str) -> String {
    mtrec_runner::link_builtin_plugins();
    match parse(text, Path::new("bad.toml"), &[]) {
        Ok(c) => match run(&c, |_| {}) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

const SMALL: &str =
    "[data]\nsource = \"mmoe-synthetic\"\nrows = 300\ndim = 8\n\n[model]\narch = \"mmoe\"\n\n[train]\nepochs = 1\n";

#[test]
fn unknown_field_in_train_names_file_line_and_key() {
    let e = parse_err(&SMALL.replace("epochs = 1", "epoch = 1"));
    assert!(e.starts_with("bad.toml"), "{e}");
    assert!(e.contains("line 10") && e.contains("unknown field `epoch`"), "{e}");
}

#[test]
fn unknown_field_in_data_and_model_names_line() {
    let e = parse_err(&SMALL.replace("dim = 8", "dimm = 8"));
    assert!(
        e.contains("line 4, [data] dimm") && e.contains("unknown field `dimm`"),
        "{e}"
    );
    let e = parse_err(&SMALL.replace("arch = \"mmoe\"", "arch = \"mmoe\"\nexpert = 4"));
    assert!(
        e.contains("line 8, [model] expert") && e.contains("unknown field `expert`"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_and_source_are_named() {
    let e = parse_err(&SMALL.replace("arch = \"mmoe\"", "arch = \"mmo\""));
    assert!(
        e.contains("line 7, [model] arch") && e.contains("unknown architecture `mmo`"),
        "{e}"
    );
    let e = parse_err(&SMALL.replace("mmoe-synthetic", "csvv"));
    assert!(
        e.contains("line 2, [data] source") && e.contains("unknown source `csvv`"),
        "{e}"
    );
}

#[test]
fn wrong_value_type_names_line() {
    let e = parse_err(&SMALL.replace("epochs = 1", "epochs = \"one\""));
    assert!(e.contains("line 10") && e.contains("invalid type"), "{e}");
}

#[test]
fn graph_node_with_unknown_input_is_named() {
    let text = SMALL.replace(
        "arch = \"mmoe\"\n",
        r#"arch = "graph"

[[model.nodes]]
id = "bottom"
kind = "mlp"
inputs = ["input"]
units = [8]

[[model.nodes]]
id = "tower-task1"
kind = "mlp-tower"
inputs = ["botom"]
task = "task1"

[[model.nodes]]
id = "tower-task2"
kind = "mlp-tower"
inputs = ["bottom"]
task = "task2"
"#,
    );
    let e = parse_err(&text);
    assert!(
        e.contains("graph node `tower-task1`") && e.contains("unknown input `botom`"),
        "{e}"
    );
}

#[test]
fn bad_train_values_name_the_key() {
    let e = parse_err(&SMALL.replace("epochs = 1", "epochs = 1\nbatch_size = 0"));
    assert!(e.contains("[train] batch_size") && e.contains("at least 1"), "{e}");
    let e = parse_err(&SMALL.replace("epochs = 1", "epochs = 1\ntask_weights = { ctr = 1.0 }"));
    assert!(e.contains("unknown task `ctr`") && e.contains("task1, task2"), "{e}");
}

/// Every shipped config parses, validates and trains (one short epoch here).
#[test]
fn every_shipped_config_trains_one_epoch() {
    mtrec_runner::link_builtin_plugins();
    let mut seen = 0;
    let mut examples = 0;
    let dirs = [root().join("configs"), root().join("configs").join("examples")];
    let paths = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()));
    for path in paths {
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let tabular = text.contains("source = \"csv\"") || text.contains("source = \"parquet\"");
        let mut sets = vec!["train.epochs=1".to_string()];
        let data_dir = if tabular {
            match mtrec_tests::data_dir(&path.display().to_string()) {
                Some(d) => Some(d),
                None => continue,
            }
        } else {
            sets.push("data.rows=400".to_string());
            None
        };
        let mut cfg = config::load(&path, &sets).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.data_dir = data_dir;
        let r = run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // single-task: one independent model per task, each with its history.
        let outcomes = match r.report.task_outcomes.as_slice() {
            [] => vec![&r.report.outcome],
            per_task => per_task.iter().map(|t| &t.outcome).collect(),
        };
        assert!(outcomes.iter().all(|o| o.history.len() == 1), "{}", path.display());
        seen += 1;
        if path.parent().is_some_and(|p| p.ends_with("examples")) {
            assert!(
                text.starts_with("# Why: "),
                "{}: say why one would want it",
                path.display()
            );
            examples += 1;
        }
    }
    assert!(seen >= 4, "only {seen} configs found");
    assert!(
        examples >= 3,
        "only {examples} example configs found in configs/examples"
    );
}

#[test]
fn run_folder_holds_config_graph_weights_and_every_split() {
    mtrec_runner::link_builtin_plugins();
    let cfg = parse(SMALL, Path::new("small.toml"), &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("mtrec-runfolder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = RunOptions {
        out: Some(dir.clone()),
        ..RunOptions::default()
    };
    let r = run_with(&cfg, opts, |_| {}).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for split in ["train", "valid", "test"] {
        let tasks = report[split]["tasks"].as_array().unwrap();
        let names: Vec<&str> = tasks.iter().filter_map(|t| t["task"].as_str()).collect();
        assert_eq!(names, ["task1", "task2"], "{split}");
        assert!(tasks.iter().all(|t| t["mse"].as_f64().is_some()), "{split}: {tasks:?}");
    }
    // The resolved config is complete and runs again as written.
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(text.contains("correlation") && text.contains("experts = 8"), "{text}");
    let again = parse(&text, &dir.join("config.toml"), &[]).unwrap();
    let r2 = run(&again, |_| {}).unwrap();
    assert_eq!(
        r.report.test.tasks[0].metrics.mse, r2.report.test.tasks[0].metrics.mse,
        "same resolved config, same seed: same result"
    );
    assert!(dir.join("model.safetensors").exists() && dir.join("graph.toml").exists());
    assert!(dir.join("checkpoint").join("state.json").exists());
    // The folder now holds a run: a second run into it must not overwrite it.
    let again = run_with(
        &cfg,
        RunOptions {
            out: Some(dir.clone()),
            ..RunOptions::default()
        },
        |_| {},
    );
    let err = again.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("--resume"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

const DOMAINS: &str = "[data]\nsource = \"multi-domain-synthetic\"\nrows = 300\ndomain_feature = false\n\n[model]\narch = \"mmoe\"\n\n[train]\nepochs = 1\n";

/// `[features] domain_as_feature` embeds the domain into the input of any
/// architecture (wider input, one more table); its errors name the key.
#[test]
fn domain_as_feature_widens_the_input_and_its_errors_name_the_key() {
    mtrec_runner::link_builtin_plugins();
    let base = parse(DOMAINS, Path::new("d.toml"), &[]).unwrap();
    let with = parse(
        &DOMAINS.replace(
            "[train]",
            "[features]\ndomain_as_feature = true\ndomain_dim = 3\n\n[train]",
        ),
        Path::new("d.toml"),
        &[],
    )
    .unwrap();
    let (a, b) = (run(&base, |_| {}).unwrap(), run(&with, |_| {}).unwrap());
    assert!(b.models[0].params.tensors().contains_key("features.domain"));
    assert!(!a.models[0].params.tensors().contains_key("features.domain"));
    // 3 domains x 3, plus 3 more input columns into each of the 8 experts and 2 gates.
    assert_eq!(b.report.parameters, a.report.parameters + 9 + 3 * 8 * 16 + 3 * 2 * 8);

    let e = parse_err(&SMALL.replace("[train]", "[features]\ndomain_as_feature = true\n\n[train]"));
    assert!(
        e.contains("[features] domain_as_feature") && e.contains("no domain column"),
        "{e}"
    );
    let e = parse_err(&DOMAINS.replace("[train]", "[features]\nside = [\"nope\"]\n\n[train]"));
    assert!(e.contains("[features] side") && e.contains("`nope`"), "{e}");
    let e = parse_err(&DOMAINS.replace("[train]", "[features]\ndomain_as_feat = true\n\n[train]"));
    assert!(e.contains("domain_as_feat"), "{e}");
}

/// SAR-Net's feature names are checked against the data, naming the key.
#[test]
fn sar_net_bad_feature_names_are_config_errors() {
    let text = DOMAINS.replace("arch = \"mmoe\"", "arch = \"sar-net\"\nbehaviour_items = \"clicks\"");
    let e = parse_err(&text);
    assert!(
        e.contains("[model]") && e.contains("`behaviour_items` = \"clicks\""),
        "{e}"
    );
    let e = parse_err(&DOMAINS.replace("arch = \"mmoe\"", "arch = \"sar-net\"\ndebias = [\"x9\"]"));
    assert!(e.contains("`debias` names `x9`"), "{e}");
    // Data without behaviour logs.
    let e = parse_err(
        &DOMAINS
            .replace("domain_feature = false", "history = 0")
            .replace("\"mmoe\"", "\"sar-net\""),
    );
    assert!(e.contains("is no sequence feature") && e.contains("none"), "{e}");
}

/// A run folder holds history.jsonl (one JSON object per epoch with the
/// EpochLog keys) and the plots as PNG + SVG; with domains also the
/// domain x expert heatmap of every gate.
#[test]
fn run_writes_history_lines_and_plots() {
    mtrec_runner::link_builtin_plugins();
    let dir = std::env::temp_dir().join(format!("mtrec-plots-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = SMALL.replace(
        "epochs = 1",
        "epochs = 3\npatience = 0\nbatch_size = 64\nconflict_every = 1",
    );
    let cfg = parse(&text, Path::new("small.toml"), &[]).unwrap();
    let opts = RunOptions {
        out: Some(dir.clone()),
        ..RunOptions::default()
    };
    run_with(&cfg, opts, |_| {}).unwrap();
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    for (i, line) in lines.iter().enumerate() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["epoch"], i + 1, "{line}");
        for key in [
            "train_loss",
            "valid",
            "valid_score",
            "rows_per_second",
            "task_weights",
            "conflict",
        ] {
            assert!(!e[key].is_null(), "epoch {}: no `{key}` in {line}", i + 1);
        }
        assert_eq!(e["train_loss"].as_array().unwrap().len(), 2, "{line}");
        assert_eq!(e["conflict"][0]["a"], "task1", "{line}");
        assert!(e["valid"]["tasks"][0]["mse"].as_f64().is_some(), "{line}");
    }
    for stem in ["train-loss", "valid-metric", "grad-cosine", "utilisation"] {
        let png = dir.join(format!("{stem}.png"));
        assert!(mtrec_tests::is_png(&png), "{}", png.display());
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{stem}.svg");
    }
    // One line per task, named in the legend.
    let loss = std::fs::read_to_string(dir.join("train-loss.svg")).unwrap();
    assert!(loss.contains("task1") && loss.contains("task2") && loss.contains("epoch"));
    std::fs::remove_dir_all(&dir).ok();

    // Data with domains: a domain x expert heatmap per gate.
    let dir = std::env::temp_dir().join(format!("mtrec-plots-domains-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sets = ["data.rows=600", "train.epochs=1"].map(String::from);
    let mut cfg = config::load(&root().join("configs").join("star.toml"), &sets).unwrap();
    cfg.set_model(config::ModelSection {
        arch: "mmoe".into(),
        params: toml::Table::new(),
    })
    .unwrap();
    let opts = RunOptions {
        out: Some(dir.clone()),
        ..RunOptions::default()
    };
    let r = run_with(&cfg, opts, |_| {}).unwrap();
    let gates: Vec<String> = r.report.test.utilisation.iter().map(|g| g.gate.clone()).collect();
    assert!(!gates.is_empty());
    for g in gates {
        assert!(mtrec_tests::is_png(&dir.join(format!("utilisation-{g}.png"))), "{g}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Batch statistics need two rows of a domain: `batch_size = 1` is refused
/// for STAR (and for a graph config with a `partitioned-norm` node), naming
/// `[train] batch_size`, its line, the node and the fix; without such a
/// node batch size 1 trains.
#[test]
fn batch_size_one_with_batch_statistics_is_refused() {
    let star = "[data]\nsource = \"multi-domain-synthetic\"\nrows = 300\n\n[model]\narch = \"star\"\n\n[train]\nepochs = 1\nbatch_size = 1\n";
    let e = parse_err(star);
    assert!(
        e.starts_with("bad.toml: line 10, [train] batch_size: batch_size = 1"),
        "{e}"
    );
    assert!(e.contains("`partitioned-norm`") && e.contains("2 or more"), "{e}");
    assert!(e.contains("`norm = false`"), "{e}");

    let path = root()
        .join("configs")
        .join("examples")
        .join("mmoe-partitioned-norm.toml");
    let sets = ["train.batch_size=1".to_string(), "data.rows=300".to_string()];
    let cfg = config::load(&path, &sets).unwrap();
    let e = run(&cfg, |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("[train] batch_size") && e.contains("`pn`") && e.contains("2 or more"),
        "{e}"
    );

    // No batch statistics, no refusal: STAR without its normalization, and
    // MMoE, train at batch size 1.
    for text in [
        star.replace("arch = \"star\"", "arch = \"star\"\nnorm = false"),
        SMALL.replace("epochs = 1", "epochs = 1\nbatch_size = 1"),
    ] {
        let cfg = parse(&text, Path::new("ok.toml"), &[]).unwrap();
        let r = run(&cfg, |_| {}).unwrap();
        // single-task: one independent model per task, each with its history.
        let outcomes = match r.report.task_outcomes.as_slice() {
            [] => vec![&r.report.outcome],
            per_task => per_task.iter().map(|t| &t.outcome).collect(),
        };
        assert!(outcomes.iter().all(|o| o.history.len() == 1), "{}", path.display());
    }
}

const TASKS_CONFIG: &str = r#"[data]
source = "csv"
path = "x.csv"
dense = ["a"]

[model]
arch = "mmoe"

[[tasks]]
name = "click"
kind = "binary"
label = { column = "c" }

[[tasks]]
kind = "binary"
name = "my task"
label = { column = "d" }
"#;

/// A task name is checked where it is written: file, line of `name`, the
/// rule (what node ids allow) and a suggestion; not later through the node
/// id `tower-<name>` the user never wrote.
#[test]
fn task_names_are_checked_at_their_line() {
    let e = parse_err(TASKS_CONFIG);
    assert!(
        e.starts_with("bad.toml: line 16, [[tasks]] #2 name: task name `my task`"),
        "{e}"
    );
    assert!(
        e.contains("ASCII letters, digits, `_` and `-`") && e.contains("e.g. `my_task`"),
        "{e}"
    );
    assert!(!e.contains("tower-my task"), "{e}");
    let e = parse_err(&TASKS_CONFIG.replace("my task", "clické"));
    assert!(e.contains("line 16") && e.contains("task name `clické`"), "{e}");
    // Through --set, no line to name, still the rule.
    let e = parse(
        &TASKS_CONFIG.replace("my task", "ok"),
        Path::new("bad.toml"),
        &["tasks=[{ name = \"a b\", kind = \"binary\", label = { column = \"c\" } }]".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--set `tasks=[{ name") && e.contains("[[tasks]] #1 name: task name `a b`"),
        "{e}"
    );
    parse(&TASKS_CONFIG.replace("my task", "like-2_b"), Path::new("ok.toml"), &[]).unwrap();
}

/// A tabular config over `dir` (given as --data-dir), binary `click` and,
/// with `regression`, a regression task `spend`.
fn tabular(dir: &Path, regression: bool) -> config::LoadedConfig {
    let mut text = String::from(
        "[data]\nsource = \"csv\"\ntrain = \"train.csv\"\nvalid = \"valid.csv\"\ntest = \"test.csv\"\n\
         dense = [{ name = \"age\", scaling = \"log\" }]\n\n[model]\narch = \"mmoe\"\nexperts = 2\n\n\
         [train]\nepochs = 2\nbatch_size = 16\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n",
    );
    if regression {
        text.push_str("\n[[tasks]]\nname = \"spend\"\nkind = \"regression\"\nlabel = \"spend\"\n");
    } else {
        text = text.replace("dense = [", "ignore = [\"spend\"]\ndense = [");
    }
    let mut cfg = parse(&text, &dir.join("config.toml"), &[]).unwrap();
    cfg.data_dir = Some(dir.to_path_buf());
    cfg
}

fn write_rows(path: &Path, rows: usize, click: impl Fn(usize) -> u8) {
    let mut s = String::from("age,click,spend\n");
    for r in 0..rows {
        s.push_str(&format!("{},{},{}\n", 20 + r % 50, click(r), r % 7));
    }
    std::fs::write(path, s).unwrap();
}

/// Validation rows of one class only: no task has a metric, and the run says
/// so before training instead of early-stopping on -infinity; with a
/// regression task beside it, the run goes on (early stopping follows that
/// task).
#[test]
fn undefined_validation_metrics_are_an_error_before_training() {
    mtrec_runner::link_builtin_plugins();
    let dir = std::env::temp_dir().join(format!("mtrec-undefined-valid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_rows(&dir.join("train.csv"), 200, |r| u8::from(r % 3 == 0));
    write_rows(&dir.join("valid.csv"), 40, |_| 0);
    write_rows(&dir.join("test.csv"), 40, |r| u8::from(r % 2 == 0));
    let mut epochs = 0;
    let e = run(&tabular(&dir, false), |_| epochs += 1).unwrap_err();
    assert!(matches!(e, mtrec_runner::RunError::NoValidationMetric { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("config.toml: no validation metric is defined"), "{e}");
    assert!(
        e.contains("task `click`'s 40 labelled validation rows are all of class 0"),
        "{e}"
    );
    assert!(e.contains("split_seed"), "the fix: {e}");
    assert_eq!(epochs, 0, "refused before training");

    let r = run(&tabular(&dir, true), |_| {}).unwrap();
    assert!(r.report.valid.tasks[0].metrics.auc.is_none());
    assert!(r.report.outcome.history.iter().all(|h| h.valid_score.is_finite()));

    // `log` of a negative value: the file, line and column.
    write_rows(&dir.join("valid.csv"), 40, |r| u8::from(r % 2 == 0));
    let text = std::fs::read_to_string(dir.join("valid.csv"))
        .unwrap()
        .replace("\n21,", "\n-21,");
    std::fs::write(dir.join("valid.csv"), text).unwrap();
    let e = run(&tabular(&dir, false), |_| {}).unwrap_err().to_string();
    assert!(e.contains("valid.csv: line 3, column `age`: -21 is negative"), "{e}");
    assert!(e.contains("signed-log"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Data logged under exposure bias (`multi-domain-synthetic`'s
/// `exposure_bias`): the runner's test rows carry the unbiased labels, the
/// training and validation rows the logged ones.
#[test]
fn exposure_bias_tests_against_the_unbiased_labels() {
    mtrec_runner::link_builtin_plugins();
    let text = "[data]\nsource = \"multi-domain-synthetic\"\nrows = 2000\nexposure_bias = 2.0\nseed = 3\n\n\
                [model]\narch = \"mmoe\"\n";
    let cfg = parse(text, Path::new("bias.toml"), &[]).unwrap();
    let prepared = mtrec_runner::source::prepare(&cfg, None).unwrap();
    let mtrec_runner::source::Rows::Memory { data, split } = prepared.rows else {
        panic!("generated data are in memory")
    };
    let generated = mtrec_data::MultiDomainSynthetic {
        rows: 2000,
        exposure_bias: 2.0,
        seed: 3,
        ..Default::default()
    }
    .generate_logged()
    .unwrap();
    let (logged, unbiased) = (&generated.data.labels, generated.unbiased.as_ref().unwrap());
    let row = |labels: &[f32], r: usize| labels[r * 2..r * 2 + 2].to_vec();
    for &r in &split.test {
        assert_eq!(row(&data.labels, r), row(unbiased, r), "test row {r}");
    }
    for &r in split.train.iter().chain(&split.valid) {
        assert_eq!(row(&data.labels, r), row(logged, r), "training row {r}");
    }
    // Not vacuous: the logged and unbiased labels of the test rows differ.
    assert!(split.test.iter().any(|&r| row(logged, r) != row(unbiased, r)));
}
