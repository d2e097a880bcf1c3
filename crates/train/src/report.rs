//! The run report: every split's metrics per task (and, for data with
//! domains, per domain and task), expert utilisation and the training
//! history; printed as a table and saved as `report.json`.

use std::fmt::Write as _;

use mtrec_core::TaskInfo;
use serde::{Deserialize, Serialize};

use crate::evaluate::{Evaluation, GateUtilisation};
use crate::metrics::TaskMetrics;
use crate::trainer::TrainOutcome;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub arch: String,
    pub parameters: usize,
    pub tasks: Vec<TaskInfo>,
    pub rows: SplitRows,
    pub train: Evaluation,
    pub valid: Evaluation,
    pub test: Evaluation,
    /// The training of the whole model; for independent one-task models
    /// (the single-task baseline) its `history` is empty and `best_epoch`
    /// 0: each task's own is in `task_outcomes`.
    pub outcome: TrainOutcome,
    /// Independent one-task models only: each task's training, with its own
    /// best epoch (chosen on its own validation metric). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_outcomes: Vec<TaskOutcome>,
}

/// One task's training in a run of independent one-task models.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub task: String,
    pub outcome: TrainOutcome,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitRows {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// The metric columns' header: GAUC only when some result has one (data
/// with a group column).
fn metric_header(gauc: bool) -> String {
    let mut s = format!("{:>8} {:>8} {:>8} {:>8}", "rows", "auc", "logloss", "mse");
    if gauc {
        let _ = write!(s, " {:>8}", "gauc");
    }
    s
}

fn metric_cells(m: &TaskMetrics, gauc: bool) -> String {
    let mut s = format!(
        "{:>8} {:>8} {:>8} {:>8}",
        m.rows,
        fmt_opt(m.auc),
        fmt_opt(m.logloss),
        fmt_opt(m.mse)
    );
    if gauc {
        let _ = write!(s, " {:>8}", fmt_opt(m.gauc));
    }
    s
}

/// What the header says of weighting: ` (weighted)` when every split's
/// metrics are weighted by the rows' sample weights, the weighted splits'
/// names when only some are, nothing when none is.
fn weighting_note(splits: &[(&str, &Evaluation)]) -> String {
    let weighted: Vec<&str> = splits.iter().filter(|(_, ev)| ev.weighted).map(|(n, _)| *n).collect();
    if weighted.is_empty() {
        String::new()
    } else if weighted.len() == splits.len() {
        " (weighted)".into()
    } else {
        format!(" (weighted: {})", weighted.join(", "))
    }
}

fn has_gauc<'a>(mut metrics: impl Iterator<Item = &'a TaskMetrics>) -> bool {
    metrics.any(|m| m.gauc.is_some())
}

impl Report {
    /// The per-task metrics table of every split.
    pub fn metrics_table(&self) -> String {
        metrics_table(&[("train", &self.train), ("valid", &self.valid), ("test", &self.test)])
    }

    /// Mean gate weight per expert for each gate, on the test rows.
    pub fn utilisation_table(&self) -> String {
        utilisation_table(&self.test.utilisation)
    }

    /// The domain x task grid of the test rows (empty for data without domains).
    pub fn domain_table(&self) -> String {
        domain_table(&self.test)
    }

    /// Mean gate weight per expert for each gate and domain, on the test rows.
    pub fn domain_utilisation_table(&self) -> String {
        let mut s = String::new();
        let width = self
            .test
            .domains
            .iter()
            .map(|d| d.domain.len())
            .max()
            .unwrap_or(6)
            .max(6);
        for d in &self.test.domains {
            for line in utilisation_table(&d.utilisation).lines() {
                let _ = writeln!(s, "{:<width$} {line}", d.domain);
            }
        }
        s
    }

    /// Summary lines then the tables, as printed at the end of a run.
    pub fn render(&self) -> String {
        let mut s = if self.task_outcomes.is_empty() {
            format!(
                "{}: {} parameters, best epoch {} of {}{}, {:.1} s training\n\n",
                self.arch,
                self.parameters,
                self.outcome.best_epoch,
                self.outcome.history.len(),
                if self.outcome.stopped_early {
                    " (stopped early)"
                } else {
                    ""
                },
                self.outcome.train_seconds
            )
        } else {
            let mut s = format!(
                "{}: {} parameters, one independent model per task, {:.1} s training\n",
                self.arch, self.parameters, self.outcome.train_seconds
            );
            for t in &self.task_outcomes {
                let o = &t.outcome;
                let early = if o.stopped_early { " (stopped early)" } else { "" };
                let _ = writeln!(
                    s,
                    "  {}: best epoch {} of {}{early}",
                    t.task,
                    o.best_epoch,
                    o.history.len()
                );
            }
            s.push('\n');
            s
        };
        s.push_str(&self.metrics_table());
        let d = self.domain_table();
        if !d.is_empty() {
            s.push_str("\ntest metrics per domain\n");
            s.push_str(&d);
        }
        let u = self.utilisation_table();
        if !u.is_empty() {
            s.push_str("\nexpert utilisation (mean gate weight on test rows)\n");
            s.push_str(&u);
        }
        let du = self.domain_utilisation_table();
        if !du.is_empty() {
            s.push_str("\nexpert utilisation per domain (mean gate weight on test rows)\n");
            s.push_str(&du);
        }
        s
    }
}

/// One row per split and task: rows, AUC, logloss, MSE (`-` where
/// undefined), and GAUC when the data has a group column; the header ends
/// in `(weighted)` when the metrics weigh rows by their sample weights.
pub fn metrics_table(splits: &[(&str, &Evaluation)]) -> String {
    let mut s = String::new();
    let width = splits
        .iter()
        .flat_map(|(_, ev)| ev.tasks.iter().map(|t| t.task.len()))
        .max()
        .unwrap_or(4)
        .max(4);
    let gauc = has_gauc(splits.iter().flat_map(|(_, ev)| ev.tasks.iter().map(|t| &t.metrics)));
    let _ = writeln!(
        s,
        "{:<6} {:<width$} {}{}",
        "split",
        "task",
        metric_header(gauc),
        weighting_note(splits)
    );
    for (split, ev) in splits {
        for t in &ev.tasks {
            let _ = writeln!(s, "{:<6} {:<width$} {}", split, t.task, metric_cells(&t.metrics, gauc));
        }
    }
    s
}

/// One line per domain and task: the columns of [`metrics_table`].
pub fn domain_table(ev: &Evaluation) -> String {
    let mut s = String::new();
    if ev.domains.is_empty() {
        return s;
    }
    let dw = ev.domains.iter().map(|d| d.domain.len()).max().unwrap_or(6).max(6);
    let tw = ev
        .domains
        .iter()
        .flat_map(|d| d.tasks.iter().map(|t| t.task.len()))
        .max()
        .unwrap_or(4)
        .max(4);
    let gauc = has_gauc(ev.domains.iter().flat_map(|d| d.tasks.iter().map(|t| &t.metrics)));
    let _ = writeln!(
        s,
        "{:<dw$} {:<tw$} {}{}",
        "domain",
        "task",
        metric_header(gauc),
        weighting_note(&[("", ev)])
    );
    for d in &ev.domains {
        for t in &d.tasks {
            let _ = writeln!(
                s,
                "{:<dw$} {:<tw$} {}",
                d.domain,
                t.task,
                metric_cells(&t.metrics, gauc)
            );
        }
    }
    s
}

pub fn utilisation_table(util: &[GateUtilisation]) -> String {
    let mut s = String::new();
    for g in util {
        let _ = write!(s, "{:<16}", g.gate);
        for (e, w) in g.experts.iter().zip(&g.mean_weight) {
            let _ = write!(s, " {e}={w:.3}");
        }
        s.push('\n');
    }
    s
}
