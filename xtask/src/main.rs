//! `cargo xtask <task>`: the project's tasks, as cargo commands.
//!
//! - `run <arch> [mtrec run options]`: trains configs/<arch>.toml (release build);
//!   with `--config FILE`, that config with its architecture set to <arch>;
//! - `list`: registered architectures and component kinds;
//! - `graph <arch> [options]`: the graph a template expands to, as a runnable config;
//! - `compare [mtrec compare options]`: several architectures over seeds;
//! - `reproduce mmoe-synthetic [mtrec reproduce options]`: the MMoE paper's synthetic experiment;
//! - `new-arch NAME`: scaffolds a third-party architecture crate in examples/NAME;
//! - `test`: the test suite (the command README.md gives);
//! - `bench [run | compare | profile | data] [options]`: the benchmarks
//!   (`mtrec-bench`, release build; docs/performance.md).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod new_arch;

pub(crate) fn root() -> PathBuf {
    // xtask/ sits at the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo run --release` of the `mtrec` binary. Not `--quiet`: the first
/// run compiles candle for minutes, and cargo's progress shows it is working.
fn mtrec(args: &[String]) -> Command {
    let mut c = cargo();
    c.args(["run", "--release", "--package", "mtrec-runner", "--bin", "mtrec", "--"]);
    c.args(args);
    c
}

const USAGE: &str = "usage: cargo xtask <run ARCH [options] | list | graph ARCH [options] | compare [options] | reproduce mmoe-synthetic [options] | new-arch NAME | test [cargo test args] | bench [run|compare|profile|data] [options]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let rest = &args[1..];
    let mut cmd = match task.as_str() {
        "run" | "graph" => {
            let Some(arch) = rest.first().filter(|a| !a.starts_with('-')) else {
                eprintln!("cargo xtask {task}: name an architecture, e.g. `cargo xtask {task} mmoe` (`cargo xtask list` shows them)");
                return ExitCode::FAILURE;
            };
            let mut a = vec![task.clone(), "--arch".to_string(), arch.clone()];
            let has_config = rest.iter().any(|r| r == "--config" || r.starts_with("--config="));
            let default = root().join("configs").join(format!("{arch}.toml"));
            if !has_config && default.exists() {
                a.push("--config".into());
                a.push(default.display().to_string());
            }
            a.extend(rest[1..].iter().cloned());
            mtrec(&a)
        }
        "list" | "compare" | "reproduce" => {
            let mut a = vec![task.clone()];
            a.extend(rest.iter().cloned());
            mtrec(&a)
        }
        "bench" => {
            let mut c = cargo();
            c.args(["run", "--release", "--package", "mtrec-bench", "--"]);
            c.args(rest);
            c
        }
        "new-arch" => return new_arch::scaffold(rest),
        "test" => {
            let mut c = cargo();
            c.args(["test", "--workspace"]);
            c.args(rest);
            c
        }
        _ => {
            eprintln!("unknown task `{task}`\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("cannot start cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
