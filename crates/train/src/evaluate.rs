//! Evaluation: per-task metrics over a set of rows, and expert utilisation.

use mtrec_core::{Model, TaskKind};
use mtrec_data::Dataset;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::metrics::TaskMetrics;

/// Mean gate weight of every expert a gate mixes, over the evaluated rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateUtilisation {
    /// The gate's node id (e.g. `gate-task1`).
    pub gate: String,
    /// `bank#i` labels, one per expert.
    pub experts: Vec<String>,
    pub mean_weight: Vec<f64>,
}

/// Metrics of one task on one set of rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    pub task: String,
    #[serde(flatten)]
    pub metrics: TaskMetrics,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub tasks: Vec<TaskResult>,
    pub utilisation: Vec<GateUtilisation>,
}

/// Model outputs for `rows`: per task, one value per row (logits for binary
/// tasks, predictions for regression), in eval mode.
pub fn predict(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Vec<Vec<f32>>> {
    Ok(run(model, data, rows, batch_size)?.0)
}

type Run = (Vec<Vec<f32>>, Vec<GateUtilisation>);

fn run(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Run> {
    let k = model.tasks().len();
    let mut outputs: Vec<Vec<f32>> = vec![Vec::with_capacity(rows.len()); k];
    let mut util: Vec<GateUtilisation> = Vec::new();
    let mut seen = 0usize;
    for batch in data.batches(rows, batch_size.max(1), model.device()) {
        let batch = batch?;
        let out = model.forward(&batch.inputs, false)?;
        for (acc, o) in outputs.iter_mut().zip(&out.outputs) {
            acc.extend(o.to_vec1::<f32>()?);
        }
        if util.is_empty() {
            util = out
                .gates
                .iter()
                .map(|g| GateUtilisation {
                    gate: g.node.clone(),
                    experts: g.experts.clone(),
                    mean_weight: vec![0.0; g.experts.len()],
                })
                .collect();
        }
        for (u, g) in util.iter_mut().zip(&out.gates) {
            let sums: Vec<f32> = g.weights.sum(0)?.to_vec1()?;
            for (m, s) in u.mean_weight.iter_mut().zip(sums) {
                *m += s as f64;
            }
        }
        seen += batch.rows();
    }
    for u in &mut util {
        for m in &mut u.mean_weight {
            *m /= seen.max(1) as f64;
        }
    }
    Ok((outputs, util))
}

/// Metrics of every task on `rows` (each task over its own labelled rows).
pub fn evaluate(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Evaluation> {
    let (outputs, utilisation) = run(model, data, rows, batch_size)?;
    let k = data.task_count();
    let mut tasks = Vec::with_capacity(k);
    for (t, (task, out)) in model.tasks().iter().zip(&outputs).enumerate() {
        let labels: Vec<f32> = rows.iter().map(|&r| data.labels[r * k + t]).collect();
        let mask: Vec<f32> = rows.iter().map(|&r| data.masks[r * k + t]).collect();
        let metrics = match task.kind {
            TaskKind::Binary => TaskMetrics::binary_from_logits(out, &labels, Some(&mask))?,
            TaskKind::Regression => TaskMetrics::regression(out, &labels, Some(&mask))?,
        };
        tasks.push(TaskResult {
            task: task.name.clone(),
            metrics,
        });
    }
    Ok(Evaluation { tasks, utilisation })
}

impl Evaluation {
    /// The early-stopping score, higher is better: the mean over tasks of AUC
    /// (binary) or -MSE (regression).
    pub fn score(&self) -> f64 {
        let vals: Vec<f64> = self
            .tasks
            .iter()
            .filter_map(|t| t.metrics.auc.or(t.metrics.mse.map(|m| -m)))
            .collect();
        if vals.is_empty() {
            f64::NEG_INFINITY
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    }
}
