//! `mtrec reproduce mmoe-synthetic`: the MMoE paper's synthetic experiment
//! (Ma et al., KDD 2018, section 3.2 / Figure 4): for correlations 0.5, 0.9
//! and 1.0, Shared-Bottom, OMoE, MMoE, CGC and PLE with the `[model]`
//! sections of `configs/<arch>.toml` (comparable sizes), over N seeds
//! (new data and initialisation per seed). Writes the final test-MSE table
//! (mean ± std), per-epoch validation-MSE curves and plots.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::compare::mean_std;
use crate::config;
use crate::error::{io, Result};
use crate::plot::{bar_chart, line_chart, Series};
use crate::run::run;

pub const ARCHS: &[&str] = &["shared-bottom", "omoe", "mmoe", "cgc", "ple"];
pub const CORRELATIONS: &[f64] = &[0.5, 0.9, 1.0];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub arch: String,
    pub correlation: f64,
    pub parameters: usize,
    /// Final test MSE averaged over the two tasks, one per seed.
    pub test_mse: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    /// Per epoch: validation MSE (mean of the two tasks) averaged over seeds.
    pub valid_curve: Vec<f64>,
}

/// Runs the grid; `sets` are extra `KEY=VALUE` overrides (e.g. rows, epochs).
pub fn mmoe_synthetic(
    configs: &Path,
    seeds: u64,
    sets: &[String],
    out: &Path,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Cell>> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut cells = Vec::new();
    for &p in CORRELATIONS {
        for arch in ARCHS {
            let mut cell = Cell {
                arch: arch.to_string(),
                correlation: p,
                parameters: 0,
                test_mse: vec![],
                mean: 0.0,
                std: 0.0,
                valid_curve: vec![],
            };
            let mut curves: Vec<Vec<f64>> = Vec::new();
            for seed in 1..=seeds {
                let mut s = sets.to_vec();
                s.push(format!("data.correlation={p}"));
                s.push(format!("data.seed={seed}"));
                s.push(format!("train.seed={seed}"));
                s.push("train.conflict_every=0".into());
                let cfg = config::load(&configs.join(format!("{arch}.toml")), &s)?;
                let r = run(&cfg, |_| {})?;
                cell.parameters = r.report.parameters;
                let mse = |ts: &[mtrec_train::TaskResult]| {
                    ts.iter().filter_map(|t| t.metrics.mse).sum::<f64>() / ts.len().max(1) as f64
                };
                let v = mse(&r.report.test.tasks);
                progress(&format!("p={p} {arch} seed {seed}: test MSE {v:.4}"));
                cell.test_mse.push(v);
                curves.push(r.report.outcome.history.iter().map(|e| mse(&e.valid.tasks)).collect());
            }
            let len = curves.iter().map(Vec::len).max().unwrap_or(0);
            // Runs that stopped early hold their last value.
            cell.valid_curve = (0..len)
                .map(|e| {
                    curves
                        .iter()
                        .map(|c| c.get(e).or(c.last()).copied().unwrap_or(f64::NAN))
                        .sum::<f64>()
                        / curves.len().max(1) as f64
                })
                .collect();
            (cell.mean, cell.std) = mean_std(&cell.test_mse);
            cells.push(cell);
        }
    }
    for &p in CORRELATIONS {
        let series: Vec<Series> = cells
            .iter()
            .filter(|c| c.correlation == p)
            .map(|c| Series {
                name: c.arch.clone(),
                points: c
                    .valid_curve
                    .iter()
                    .enumerate()
                    .map(|(e, v)| ((e + 1) as f64, *v))
                    .collect(),
            })
            .collect();
        line_chart(
            &out.join(format!("curves-p{:03}", (p * 100.0).round() as u32)),
            &format!("correlation {p}: validation MSE (mean of tasks and seeds)"),
            "epoch",
            "validation MSE",
            &series,
        )?;
    }
    let groups: Vec<String> = CORRELATIONS.iter().map(|p| format!("p = {p}")).collect();
    let bars: Vec<(String, Vec<(f64, f64)>)> = ARCHS
        .iter()
        .map(|a| {
            (
                a.to_string(),
                cells.iter().filter(|c| c.arch == *a).map(|c| (c.mean, c.std)).collect(),
            )
        })
        .collect();
    bar_chart(
        &out.join("final-mse"),
        "final test MSE (mean ± std over seeds)",
        "test MSE",
        &groups,
        &bars,
    )?;
    let md = markdown(&cells, seeds);
    mtrec_core::atomic::write_bytes(&out.join("mmoe-synthetic.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(&cells).map_err(|e| crate::RunError::Usage(e.to_string()))?;
    mtrec_core::atomic::write_bytes(&out.join("mmoe-synthetic.json"), json.as_bytes())?;
    Ok(cells)
}

/// The final test-MSE table: one row per model, one column per correlation.
pub fn markdown(cells: &[Cell], seeds: u64) -> String {
    let mut s = String::from("| model | parameters |");
    for p in CORRELATIONS {
        let _ = write!(s, " p = {p} |");
    }
    s.push_str("\n|---|---|---|---|---|\n");
    for a in ARCHS {
        let params = cells.iter().find(|c| c.arch == *a).map_or(0, |c| c.parameters);
        let _ = write!(s, "| {a} | {params} |");
        for p in CORRELATIONS {
            match cells.iter().find(|c| c.arch == *a && c.correlation == *p) {
                Some(c) => {
                    let _ = write!(s, " {:.4} ± {:.4} |", c.mean, c.std);
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nFinal test MSE (mean of the two tasks), mean ± sample std over {seeds} seeds."
    );
    s
}
