//! Malformed configs as a new user writes them: every error names the file,
//! the line (or the `--set` that gave the value) and the key, and for a
//! value of the wrong type the syntax the key expects.

use std::path::Path;

use mtrec_core::GraphEnv;
use mtrec_runner::config;
use mtrec_runner::run::expand;
use mtrec_runner::source::prepare;

/// The first error of reading, preparing (small generated data) and
/// expanding `text` with `sets`.
fn first_error(text: &str, sets: &[&str]) -> String {
    mtrec_runner::link_builtin_plugins();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let result = config::parse(text, Path::new("bad.toml"), &sets).and_then(|cfg| {
        let prepared = prepare(&cfg, None)?;
        let (graph, _) = expand(&cfg, &prepared)?;
        let env = GraphEnv {
            input_width: prepared.features.width(),
            features: prepared.features.clone(),
            tasks: prepared.tasks.clone(),
            domains: prepared.domain_count(),
        };
        mtrec_core::graph::validate(&graph, &env)
            .map(|_| ())
            .map_err(|e| cfg.model_error(e))
    });
    match result {
        Ok(()) => panic!("no error for:\n{text}\nsets {sets:?}"),
        Err(e) => e.to_string(),
    }
}

const MMOE: &str = "[data]\nsource = \"mmoe-synthetic\"\nrows = 200\n\n[model]\narch = \"mmoe\"\n";
const STAR: &str = "[data]\nsource = \"multi-domain-synthetic\"\nrows = 300\n\n[model]\narch = \"star\"\n";
const SAR: &str =
    "[data]\nsource = \"multi-domain-synthetic\"\nrows = 300\nhistory = 4\n\n[model]\narch = \"sar-net\"\n";
const CSV: &str = "[data]\nsource = \"csv\"\npath = \"x.csv\"\ncolumns = [\"a\", \"y\"]\nsparse = [\"a\"]\n\n[model]\narch = \"mmoe\"\n\n";
const GRAPH: &str = "[data]\nsource = \"mmoe-synthetic\"\nrows = 200\n\n[model]\narch = \"graph\"\n\n\
[[model.nodes]]\nid = \"experts\"\nkind = \"mlp-experts\"\ninputs = [\"input\"]\ncount = 4\nunits = [8]\n\n\
[[model.nodes]]\nid = \"gate\"\nkind = \"softmax-gate\"\ninputs = [\"input\"]\nexperts = [\"experts\"]\n\n\
[[model.nodes]]\nid = \"tower-task1\"\nkind = \"mlp-tower\"\ninputs = [\"gate\"]\ntask = \"task1\"\n\n\
[[model.nodes]]\nid = \"tower-task2\"\nkind = \"mlp-tower\"\ninputs = [\"gate\"]\ntask = \"task2\"\n";

/// One malformed config: its text, `--set`s, and what the message must hold.
struct Case {
    name: &'static str,
    text: String,
    sets: &'static [&'static str],
    expect: &'static [&'static str],
}

fn case(
    name: &'static str,
    text: impl Into<String>,
    sets: &'static [&'static str],
    expect: &'static [&'static str],
) -> Case {
    Case {
        name,
        text: text.into(),
        sets,
        expect,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // [model]: template parameters.
        case("model wrong type", format!("{MMOE}experts = \"eight\"\n"), &[], &["line 7", "[model] experts", "expected usize", "`experts = 8`"]),
        case("model list element", format!("{MMOE}expert_units = [8, \"x\"]\n"), &[], &["line 7", "[model] expert_units[1]", "expected usize"]),
        case("model unknown key", format!("{MMOE}expert = 8\n"), &[], &["line 7", "[model] expert", "unknown field `expert`"]),
        case("model negative", format!("{MMOE}tower_units = [-8]\n"), &[], &["line 7", "[model] tower_units[0]"]),
        case("model arch type", "[data]\nsource = \"mmoe-synthetic\"\n[model]\narch = 5\n", &[], &["line 4", "[model] arch"]),
        case("model arch unknown", "[data]\nsource = \"mmoe-synthetic\"\n[model]\narch = \"mmoee\"\n", &[], &["line 4", "[model] arch", "unknown architecture `mmoee`"]),
        case("ple levels zero", "[data]\nsource = \"mmoe-synthetic\"\n[model]\narch = \"ple\"\nlevels = 0\n", &[], &["line 5", "[model] levels", "at least 1"]),
        case("star momentum type", format!("{STAR}norm_momentum = \"fast\"\n"), &[], &["line 7", "[model] norm_momentum", "expected f64", "`norm_momentum = 0.1`"]),
        case("sar-net debias unknown", format!("{SAR}debias = [\"nope\"]\n"), &[], &["line 8", "[model] debias", "`nope`"]),
        // Dotted keys and inline tables.
        case("dotted keys", "data.source = \"mmoe-synthetic\"\ndata.rows = \"many\"\nmodel.arch = \"mmoe\"\n", &[], &["line 2", "[data] rows", "expected usize"]),
        case("inline table", "data = { source = \"mmoe-synthetic\" }\nmodel = { arch = \"mmoe\", experts = -1 }\n", &[], &["line 2", "column 26", "[model] experts", "`experts = 8`"]),
        // [data]
        case("data negative rows", "[data]\nsource = \"mmoe-synthetic\"\nrows = -5\n[model]\narch = \"mmoe\"\n", &[], &["line 3", "[data] rows"]),
        case("data wrong type", "[data]\nsource = \"mmoe-synthetic\"\ncorrelation = \"high\"\n[model]\narch = \"mmoe\"\n", &[], &["line 3", "[data] correlation", "expected f64", "`correlation = "]),
        case("data split length", "[data]\nsource = \"mmoe-synthetic\"\nsplit = [0.8, 0.2]\n[model]\narch = \"mmoe\"\n", &[], &["line 3", "[data] split"]),
        case("data unknown key", "[data]\nsource = \"mmoe-synthetic\"\nembedding_dim = -4\n[model]\narch = \"mmoe\"\n", &[], &["line 3", "[data] embedding_dim", "unknown field"]),
        case("generated weight", "[data]\nsource = \"mmoe-synthetic\"\nweight = \"w\"\n[model]\narch = \"mmoe\"\n", &[], &["line 3", "[data] weight", "no weight column"]),
        case("generated group", format!("{STAR}[features]\n"), &["data.group=\"user\""], &["--set `data.group=\"user\"`", "[data] group", "group `user` is not a sparse field", "user_id"]),
        case("multi-domain shares type", "[data]\nsource = \"multi-domain-synthetic\"\ndomain_shares = \"0.5\"\n[model]\narch = \"star\"\n", &[], &["line 3", "[data] domain_shares", "expected a sequence"]),
        // [train], [features]
        case("train lr type", format!("{MMOE}[train]\nlr = \"fast\"\n"), &[], &["line 8", "[train] lr", "expected f64"]),
        case("train epochs float", format!("{MMOE}[train]\nepochs = 1.5\n"), &[], &["line 8", "[train] epochs"]),
        case("train unknown key", format!("{MMOE}[train]\nlearning_rate = 0.1\n"), &[], &["line 8", "[train] learning_rate", "unknown field"]),
        case("eval weighted without weights", format!("{MMOE}[eval]\nweighted = true\n"), &[], &["bad.toml", "line 8", "[eval] weighted", "names no weight column", "weight = \"<column>\"", "or remove `weighted = true`"]),
        case("eval weighted without weights set", MMOE, &["eval.weighted=true"], &["--set `eval.weighted=true`", "[eval] weighted", "names no weight column"]),
        case("eval weighted type", format!("{MMOE}[eval]\nweighted = \"yes\"\n"), &[], &["line 8", "[eval] weighted", "expected a boolean", "`weighted = false`"]),
        case("eval unknown key", format!("{MMOE}[eval]\nweights = true\n"), &[], &["line 8", "[eval] weights", "unknown field"]),
        case("features type", format!("{STAR}[features]\ndomain_dim = \"4\"\n"), &[], &["line 8", "[features] domain_dim"]),
        // [[tasks]]
        case("task name", format!("{CSV}[[tasks]]\nname = \"my task\"\nkind = \"binary\"\nlabel = \"y\"\n"), &[], &["line 11", "[[tasks]] #1 name", "my_task"]),
        case("task kind type", format!("{CSV}[[tasks]]\nname = \"t\"\nkind = \"binary\"\nlabel = \"y\"\n[[tasks]]\nname = \"u\"\nkind = 3\nlabel = \"y\"\n"), &[], &["line 16", "[[tasks]] #2 kind"]),
        // Graph configs: a component's parameters.
        case("node param type", GRAPH.replace("count = 4", "count = \"four\""), &[], &["line 12", "[[model.nodes]] #1 count", "graph node `experts`", "`count = 8`"]),
        case("node unknown param", GRAPH.replace("count = 4", "cout = 4"), &[], &["line 12", "[[model.nodes]] #1 cout", "unknown field `cout`"]),
        case("node semantic", GRAPH.replace("units = [8]", "units = [8, 0]"), &[], &["bad.toml line 8", "graph node `experts`", "zero width"]),
        case("node id type", GRAPH.replace("id = \"gate\"", "id = 7"), &[], &["line 16", "[[model.nodes]] #2 id"]),
        // --set
        case("set wrong type", MMOE, &["train.lr=fast"], &["--set `train.lr=fast`", "[train] lr", "expected f64"]),
        case("set list syntax", MMOE, &["model.expert_units=8,8"], &["--set `model.expert_units=8,8`", "[model] expert_units", "`--set model.expert_units=[16]`"]),
        case("set data", MMOE, &["data.rows=many"], &["--set `data.rows=many`", "[data] rows", "--set data.rows="]),
        case("set unknown", MMOE, &["model.expert=3"], &["--set `model.expert=3`", "unknown field `expert`"]),
    ]
}

#[test]
fn every_malformed_config_names_its_file_line_and_key() {
    let cases = cases();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let message = first_error(&c.text, c.sets);
        assert!(message.starts_with("bad.toml"), "{}: {message}", c.name);
        for want in c.expect {
            if !message.contains(want) {
                failures.push(format!("{}: missing `{want}` in\n  {message}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_set_without_a_value_says_how_to_write_one() {
    mtrec_runner::link_builtin_plugins();
    let err = config::parse(MMOE, Path::new("bad.toml"), &["train.lr".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--set `train.lr`") && err.contains("KEY=VALUE"), "{err}");
}

/// `compare --models FILE`: a file holding only `[model]` is a model; its
/// mistakes are located like a whole config's.
#[test]
fn a_model_file_may_hold_only_the_model() {
    mtrec_runner::link_builtin_plugins();
    let dir = std::env::temp_dir().join(format!("mtrec-model-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("mmoe-4.toml");
    std::fs::write(&good, "[model]\narch = \"mmoe\"\nexperts = 4\n").unwrap();
    let model = config::load_model(&good).unwrap();
    assert_eq!(model.arch, "mmoe");
    assert_eq!(model.params.get("experts").and_then(toml::Value::as_integer), Some(4));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "# a model\n[model]\narch = \"mmoe\"\nexperts = \"four\"\n").unwrap();
    let err = config::load_model(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml: line 4, [model] experts") && err.contains("expected usize"),
        "{err}"
    );
    let none = dir.join("none.toml");
    std::fs::write(&none, "[train]\nepochs = 3\n").unwrap();
    let err = config::load_model(&none).unwrap_err().to_string();
    assert!(err.contains("none.toml") && err.contains("[model]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
