//! `cargo xtask new-arch NAME`: a new architecture crate in examples/NAME
//! (package `mtrec-NAME`), a working template over core component kinds with
//! a test, picked up as a workspace member by the `examples/*` glob.

use std::process::ExitCode;

const CARGO_TOML: &str = r#"[package]
name = "mtrec-{name}"
description = "The {name} architecture for mtrec"
version.workspace = true
edition.workspace = true
license.workspace = true
publish = false

[dependencies]
mtrec-core.workspace = true
serde.workspace = true
inventory.workspace = true

[dev-dependencies]
toml.workspace = true
candle-core.workspace = true

[lints]
workspace = true
"#;

const LIB_RS: &str = r#"//! The `{name}` architecture (a scaffold from `cargo xtask new-arch`): a
//! shared bottom MLP under one `mlp-tower` per task, built from core
//! component kinds. Change `expand` to build your graph; a new component
//! kind is a `mtrec_core::Kind` registered with `mtrec_core::register_kind!`.
//! See docs/writing-a-plugin.md.

use mtrec_core::components::mlp::{MlpKind, MlpParams};
use mtrec_core::protocol::towers;
use mtrec_core::{GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

/// The template's parameters: `[model]` keys besides `arch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub bottom_units: Vec<usize>,
    pub tower_units: Vec<usize>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            bottom_units: vec![32],
            tower_units: vec![8],
        }
    }
}

pub struct Arch;

impl Template for Arch {
    const NAME: &'static str = "{name}";
    const SUMMARY: &'static str = "{name}: a shared bottom MLP under one tower per task (scaffold)";
    type Params = Params;
    fn expand(&self, p: &Params, env: &GraphEnv) -> Result<GraphSpec> {
        let bottom = MlpParams {
            units: p.bottom_units.clone(),
            ..Default::default()
        };
        let mut nodes = vec![NodeSpec::of("bottom", &MlpKind, &bottom).input(INPUT)];
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "bottom".to_string()));
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(Arch);

/// Call from a binary so that the linker keeps this crate's registration.
pub fn link() {}
"#;

const TEST_RS: &str = r#"//! The template expands to a graph that validates and builds.
#![allow(clippy::unwrap_used)]

use mtrec_core::registry::architecture;
use mtrec_core::{FeatureSpec, GraphEnv, Model, TaskInfo, TaskKind};

#[test]
fn expands_to_a_valid_graph_and_builds() {
    {crate}::link();
    let tasks: Vec<TaskInfo> = ["a", "b"]
        .iter()
        .map(|n| TaskInfo { name: n.to_string(), kind: TaskKind::Binary })
        .collect();
    let features = FeatureSpec::dense_only((0..6).map(|i| format!("x{i}")).collect());
    let env = GraphEnv { input_width: features.width(), tasks: tasks.clone(), domains: 0, features: features.clone() };
    let graph = architecture("{name}").unwrap().expand(&toml::Table::new(), &env).unwrap();
    let model = Model::build(&graph, &features, &tasks, 0, 1, &candle_core::Device::Cpu).unwrap();
    assert!(model.params().parameter_count() > 0);
}
"#;

pub fn scaffold(args: &[String]) -> ExitCode {
    let Some(name) = args.first() else {
        eprintln!("cargo xtask new-arch: name the architecture, e.g. `cargo xtask new-arch my-arch`");
        return ExitCode::FAILURE;
    };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        eprintln!("cargo xtask new-arch: `{name}` must be lowercase letters, digits and `-`, starting with a letter");
        return ExitCode::FAILURE;
    }
    let dir = crate::root().join("examples").join(name);
    if dir.exists() {
        eprintln!("cargo xtask new-arch: {} already exists", dir.display());
        return ExitCode::FAILURE;
    }
    let krate = format!("mtrec_{}", name.replace('-', "_"));
    let fill = |t: &str| t.replace("{name}", name).replace("{crate}", &krate);
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        (&*format!("tests/{}.rs", name.replace('-', "_")), fill(TEST_RS)),
    ];
    for (path, text) in &files {
        let p = dir.join(path);
        let written = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&p, text));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    println!(
        "created {} (package mtrec-{name}); test it with `cargo test -p mtrec-{name}`; link it into the runner as docs/writing-a-plugin.md shows",
        dir.display()
    );
    ExitCode::SUCCESS
}
