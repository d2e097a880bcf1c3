//! `mtrec reproduce mmoe-synthetic`: the MMoE paper's synthetic experiment
//! (Ma et al., KDD 2018, section 3.2 / Figure 4): for correlations 0.5, 0.9
//! and 1.0, Shared-Bottom, OMoE, MMoE, CGC and PLE with the `[model]`,
//! `[data]` and `[train]` sections of `configs/<arch>.toml` (comparable
//! sizes, the paper's 40k rows), over N seeds (new data and initialisation
//! per seed). Writes the final test-MSE table (mean ± std), test-MSE curves
//! over training steps, plots and JSON. The outputs are rewritten after every
//! seed, so an interrupted run leaves the results of its finished seeds.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::compare::mean_std;
use crate::config;
use crate::error::{io, Result};
use crate::plot::{bar_chart, line_chart_scaled, Series, YScale};
use crate::run::{run_with, RunOptions};

pub const ARCHS: &[&str] = &["shared-bottom", "omoe", "mmoe", "cgc", "ple"];
pub const CORRELATIONS: &[f64] = &[0.5, 0.9, 1.0];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub arch: String,
    pub correlation: f64,
    pub parameters: usize,
    /// Final test MSE (best validation epoch's weights) averaged over the
    /// two tasks, one per seed.
    pub test_mse: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    /// Optimizer steps (batches) per epoch.
    pub steps_per_epoch: usize,
    /// Per seed, per epoch: test MSE (mean of the two tasks) of that
    /// epoch's weights.
    pub test_curves: Vec<Vec<f64>>,
    /// Per epoch: `test_curves` averaged over seeds; a run that stopped
    /// early holds its last value.
    pub test_curve: Vec<f64>,
}

/// Mean MSE over the tasks of an evaluation.
fn task_mse(ts: &[mtrec_train::TaskResult]) -> f64 {
    ts.iter().filter_map(|t| t.metrics.mse).sum::<f64>() / ts.len().max(1) as f64
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
    let mut cells: Vec<Cell> = CORRELATIONS
        .iter()
        .flat_map(|&p| {
            ARCHS.iter().map(move |a| Cell {
                arch: a.to_string(),
                correlation: p,
                parameters: 0,
                test_mse: vec![],
                mean: 0.0,
                std: 0.0,
                steps_per_epoch: 0,
                test_curves: vec![],
                test_curve: vec![],
            })
        })
        .collect();
    // Seeds outermost: after each seed the outputs hold a complete grid.
    for seed in 1..=seeds {
        for cell in &mut cells {
            let (p, arch) = (cell.correlation, cell.arch.clone());
            let mut s = sets.to_vec();
            s.push(format!("data.correlation={p}"));
            s.push(format!("data.seed={seed}"));
            s.push(format!("train.seed={seed}"));
            // Diagnostics would add backward passes without changing the result.
            s.push("train.conflict_every=0".into());
            let cfg = config::load(&configs.join(format!("{arch}.toml")), &s)?;
            let mut curve = Vec::new();
            let mut on_test = |_: &mtrec_train::EpochLog, ev: &mtrec_train::Evaluation| curve.push(task_mse(&ev.tasks));
            let opts = RunOptions {
                on_test: Some(&mut on_test),
                ..RunOptions::default()
            };
            let r = run_with(&cfg, opts, |_| {})?;
            cell.parameters = r.report.parameters;
            cell.steps_per_epoch = r.report.rows.train.div_ceil(cfg.config.train.batch_size.max(1));
            let v = task_mse(&r.report.test.tasks);
            progress(&format!(
                "seed {seed} p={p} {arch}: test MSE {v:.4} (best epoch {} of {})",
                r.report.outcome.best_epoch,
                r.report.outcome.history.len()
            ));
            cell.test_mse.push(v);
            cell.test_curves.push(curve);
            (cell.mean, cell.std) = mean_std(&cell.test_mse);
            let len = cell.test_curves.iter().map(Vec::len).max().unwrap_or(0);
            cell.test_curve = (0..len)
                .map(|e| {
                    let n = cell.test_curves.len().max(1) as f64;
                    cell.test_curves
                        .iter()
                        .map(|c| c.get(e).or(c.last()).copied().unwrap_or(f64::NAN))
                        .sum::<f64>()
                        / n
                })
                .collect();
        }
        write_outputs(&cells, seed, out)?;
        progress(&format!("seed {seed} of {seeds} done: {} updated", out.display()));
    }
    Ok(cells)
}

/// The table, JSON and plots of the grid after `seeds` seeds.
fn write_outputs(cells: &[Cell], seeds: u64, out: &Path) -> Result<()> {
    for &p in CORRELATIONS {
        let series: Vec<Series> = cells
            .iter()
            .filter(|c| c.correlation == p)
            .map(|c| Series {
                name: c.arch.clone(),
                points: c
                    .test_curve
                    .iter()
                    .enumerate()
                    .map(|(e, v)| (((e + 1) * c.steps_per_epoch) as f64, *v))
                    .collect(),
            })
            .collect();
        // Log scale: the MSE falls by two orders of magnitude, and the
        // differences between models are in the last one.
        line_chart_scaled(
            &out.join(format!("curves-p{:03}", (p * 100.0).round() as u32)),
            &format!("correlation {p}: test MSE (mean of tasks, {seeds} seeds)"),
            "training steps (batches)",
            "test MSE (log scale)",
            &series,
            YScale::Log,
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
        &format!("final test MSE (mean ± std over {seeds} seeds)"),
        "test MSE",
        &groups,
        &bars,
    )?;
    let md = markdown(cells, seeds);
    mtrec_core::atomic::write_bytes(&out.join("mmoe-synthetic.md"), md.as_bytes())?;
    let json = serde_json::to_string_pretty(cells).map_err(|e| crate::error::encode("the grid's results")(&e))?;
    mtrec_core::atomic::write_bytes(&out.join("mmoe-synthetic.json"), json.as_bytes())?;
    Ok(())
}

/// The final test-MSE table: one row per model, one column per correlation,
/// and the range of the means over the correlations (the paper's claim:
/// MMoE's loss barely depends on the correlation, Shared-Bottom's does).
pub fn markdown(cells: &[Cell], seeds: u64) -> String {
    let mut s = String::from("| model | parameters |");
    for p in CORRELATIONS {
        let _ = write!(s, " p = {p} |");
    }
    s.push_str(" max - min over p |\n|---|---|");
    s.push_str(&"---|".repeat(CORRELATIONS.len() + 1));
    s.push('\n');
    for a in ARCHS {
        let params = cells.iter().find(|c| c.arch == *a).map_or(0, |c| c.parameters);
        let _ = write!(s, "| {a} | {params} |");
        let mut means = Vec::new();
        for p in CORRELATIONS {
            match cells.iter().find(|c| c.arch == *a && c.correlation == *p) {
                Some(c) => {
                    let _ = write!(s, " {:.4} ± {:.4} |", c.mean, c.std);
                    means.push(c.mean);
                }
                None => s.push_str(" - |"),
            }
        }
        let hi = means.iter().copied().fold(f64::NAN, f64::max);
        let lo = means.iter().copied().fold(f64::NAN, f64::min);
        let _ = writeln!(s, " {:.4} |", hi - lo);
    }
    let _ = writeln!(
        s,
        "\nFinal test MSE (mean of the two tasks, best validation epoch's weights), mean ± sample std over {seeds} seeds."
    );
    s
}
