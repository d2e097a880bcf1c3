//! Config-only models (`arch = "graph"`): every template's printed graph
//! parses back to the same graph and trains to the same metrics, and
//! malformed graphs are errors naming the problem and where it is written.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mtrec_core::GraphSpec;
use mtrec_runner::config::{parse, LoadedConfig};
use mtrec_runner::run::{expand, graph_config_text, run};
use mtrec_runner::source::prepare;

const MMOE_DATA: &str = "[data]\nsource = \"mmoe-synthetic\"\nrows = 400\ndim = 8\n";
const DOMAIN_DATA: &str = "[data]\nsource = \"multi-domain-synthetic\"\nrows = 600\n";
/// Binary funnel data (like only after click), where AITM's calibrator applies.
const FUNNEL_DATA: &str =
    "[data]\nsource = \"multi-domain-synthetic\"\nrows = 600\ndomains = 1\ndomain_shares = [1.0]\nfunnel = true\n";
const TRAIN: &str = "\n[train]\nepochs = 2\nbatch_size = 64\nseed = 3\n";

fn template(arch: &str) -> LoadedConfig {
    mtrec_runner::link_builtin_plugins();
    let data = if arch == "aitm" {
        FUNNEL_DATA
    } else if !mtrec_plugins::architectures(true).contains(&arch) {
        DOMAIN_DATA
    } else {
        MMOE_DATA
    };
    let text = format!("{data}\n[model]\narch = \"{arch}\"\n{TRAIN}");
    parse(&text, Path::new(&format!("{arch}.toml")), &[]).unwrap()
}

fn graph_of(cfg: &LoadedConfig) -> GraphSpec {
    let prepared = prepare(cfg, None).unwrap();
    expand(cfg, &prepared).unwrap().0
}

/// `mtrec graph <arch>` printed, then read back as a config.
fn printed(cfg: &LoadedConfig) -> LoadedConfig {
    let text = graph_config_text(cfg).unwrap();
    let again = parse(&text, Path::new("printed.toml"), &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again.config.model.arch, "graph");
    again
}

#[test]
fn every_template_prints_a_graph_that_parses_back_identical() {
    for arch in mtrec_plugins::architectures(false) {
        let cfg = template(arch);
        let original = graph_of(&cfg);
        let again = graph_of(&printed(&cfg));
        assert_eq!(original, again, "{arch}: the printed graph differs");
        // Where nodes were written is recorded for error messages.
        assert!(
            again
                .nodes
                .iter()
                .all(|n| n.origin.as_deref().is_some_and(|o| o.contains("printed.toml line"))),
            "{arch}: {:?}",
            again.nodes.iter().map(|n| &n.origin).collect::<Vec<_>>()
        );
    }
}

#[test]
fn printed_graph_trains_to_the_templates_metrics_exactly() {
    for arch in ["mmoe", "ple", "sar-net", "aitm", "pepnet", "adasparse"] {
        let cfg = template(arch);
        let a = run(&cfg, |_| {}).unwrap();
        let b = run(&printed(&cfg), |_| {}).unwrap();
        let json = |r: &mtrec_runner::run::RunResult| {
            serde_json::to_string(&(&r.report.train, &r.report.valid, &r.report.test)).unwrap()
        };
        assert_eq!(json(&a), json(&b), "{arch}: same graph and seed, different metrics");
        assert_eq!(a.report.parameters, b.report.parameters);
    }
}

/// A graph config over two tasks (`task1`, `task2`) with the given nodes.
/// The nodes start at line 9.
fn graph_config(nodes: &str) -> String {
    format!("{MMOE_DATA}\n[model]\narch = \"graph\"\n\n{nodes}\n[train]\nepochs = 1\n")
}

fn error_of(text: &str) -> String {
    mtrec_runner::link_builtin_plugins();
    match parse(text, Path::new("bad.toml"), &[]) {
        Err(e) => e.to_string(),
        Ok(cfg) => match run(&cfg, |_| {}) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        },
    }
}

const TOWERS: &str = r#"
[[model.nodes]]
id = "tower-task1"
kind = "mlp-tower"
inputs = ["bottom"]
task = "task1"

[[model.nodes]]
id = "tower-task2"
kind = "mlp-tower"
inputs = ["bottom"]
task = "task2"
"#;

const BOTTOM: &str = r#"[[model.nodes]]
id = "bottom"
kind = "mlp"
inputs = ["input"]
units = [8]
"#;

#[test]
fn malformed_graphs_name_the_problem_and_where_it_is() {
    // (what, nodes, expected fragments of the error)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "cycle",
            format!(
                "{}\n[[model.nodes]]\nid = \"b2\"\nkind = \"mlp\"\ninputs = [\"bottom\"]\nunits = [8]\n{TOWERS}",
                BOTTOM.replace("inputs = [\"input\"]", "inputs = [\"b2\"]")
            ),
            vec!["graph node `", "bad.toml line ", "cycle: "],
        ),
        (
            "unknown node",
            format!("{BOTTOM}{}", TOWERS.replacen("[\"bottom\"]", "[\"botom\"]", 1)),
            vec!["graph node `tower-task1` (bad.toml line 15)", "unknown input `botom`"],
        ),
        (
            "unknown kind",
            format!("{}{TOWERS}", BOTTOM.replace("\"mlp\"", "\"mlpp\"")),
            vec!["graph node `bottom` (bad.toml line 9)", "unknown component kind `mlpp`"],
        ),
        (
            "width mismatch",
            r#"[[model.nodes]]
id = "e16"
kind = "mlp-experts"
inputs = ["input"]
count = 2
units = [16]

[[model.nodes]]
id = "e8"
kind = "mlp-experts"
inputs = ["input"]
count = 2
units = [8]

[[model.nodes]]
id = "bottom"
kind = "softmax-gate"
inputs = ["input"]
experts = ["e16", "e8"]
"#
            .to_string()
                + TOWERS,
            vec![
                "graph node `bottom` (bad.toml line 23)",
                "width mismatch",
                "`e8` outputs width 8",
            ],
        ),
        (
            "gate over no experts",
            format!(
                "{}{TOWERS}",
                BOTTOM
                    .replace("\"mlp\"", "\"softmax-gate\"")
                    .replace("units = [8]\n", "")
            ),
            vec!["graph node `bottom` (bad.toml line 9)", "gate over zero experts"],
        ),
        (
            "task without tower",
            format!(
                "{BOTTOM}{}",
                &TOWERS[..TOWERS.find("\n[[model.nodes]]\nid = \"tower-task2\"").unwrap()]
            ),
            vec!["bad.toml: line 7, [model] arch", "task `task2` has no tower"],
        ),
        (
            "duplicate node id",
            format!("{BOTTOM}\n{BOTTOM}{TOWERS}"),
            vec![
                "graph node `bottom` (bad.toml line 15)",
                "duplicate node id",
                "(first at bad.toml line 9)",
            ],
        ),
        (
            "tower for unknown task",
            format!("{BOTTOM}{}", TOWERS.replacen("task = \"task1\"", "task = \"ctr\"", 1)),
            vec![
                "graph node `tower-task1` (bad.toml line 15)",
                "tower for unknown task `ctr`",
                "task1, task2",
            ],
        ),
        (
            "wrong value type of a node key",
            format!("{}{TOWERS}", BOTTOM.replace("kind = \"mlp\"", "kind = 5")),
            vec![
                "bad.toml: line 11, [[model.nodes]] #1 kind",
                "invalid type: integer `5`, expected a string",
            ],
        ),
        (
            "wrong value type of a kind's parameter",
            format!("{}{TOWERS}", BOTTOM.replace("units = [8]", "units = \"8\"")),
            vec![
                "bad.toml: line 13, [[model.nodes]] #1 units",
                "graph node `bottom` (kind `mlp`)",
                "invalid type: string \"8\", expected a sequence (expected like `units = [16]`)",
            ],
        ),
        (
            "missing required key",
            format!("{}{TOWERS}", BOTTOM.replace("kind = \"mlp\"\n", "")),
            vec!["bad.toml: line 9, [[model.nodes]] #1: missing field `kind`"],
        ),
        (
            "TOML syntax error",
            format!("{}{TOWERS}", BOTTOM.replace("units = [8]", "units = [8")),
            vec!["bad.toml: TOML parse error at line 15, column 1", "expected `]`"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, nodes, expected) in &cases {
        let text = graph_config(nodes);
        let err = error_of(&text);
        if let Some(missing) = expected.iter().find(|f| !err.contains(*f)) {
            failures.push(format!("{what}: `{missing}` not in\n  {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
