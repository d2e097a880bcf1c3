//! Evaluation: per-task metrics over a set of rows, and expert utilisation;
//! for data with domains, the same per domain (a domain x task grid).

use mtrec_core::{Model, TaskInfo, TaskKind};
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

/// The metrics of every task on the evaluated rows of one domain, and the
/// expert utilisation on them: one row of the domain x task grid.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DomainResult {
    /// The domain's name (from the data's domain column).
    pub domain: String,
    /// Evaluated rows of this domain (each task's `rows` counts its labelled ones).
    pub rows: usize,
    /// One cell per task, in task order. A cell without rows has no metrics;
    /// a cell whose rows hold one class has `auc: None`.
    pub tasks: Vec<TaskResult>,
    /// Mean gate weight per expert of every gate, over this domain's rows
    /// (empty without gates or rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub utilisation: Vec<GateUtilisation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub tasks: Vec<TaskResult>,
    pub utilisation: Vec<GateUtilisation>,
    /// For data with domains: one entry per domain of the data, in domain id
    /// order (also the domains without evaluated rows). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainResult>,
}

/// Model outputs for `rows`: per task, one value per row (logits for binary
/// tasks, predictions for regression), in eval mode.
pub fn predict(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Vec<Vec<f32>>> {
    Ok(run(model, data, rows, batch_size)?.outputs)
}

struct Run {
    /// Per task, one value per row.
    outputs: Vec<Vec<f32>>,
    utilisation: Vec<GateUtilisation>,
    /// Per domain (data with domains only): gate weight sums like
    /// `utilisation`, and the number of rows summed.
    domain_utilisation: Vec<(Vec<GateUtilisation>, usize)>,
}

fn run(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Run> {
    let k = model.tasks().len();
    let mut outputs: Vec<Vec<f32>> = vec![Vec::with_capacity(rows.len()); k];
    let mut util: Vec<GateUtilisation> = Vec::new();
    let domain_ids = data.domains.as_ref().map(|d| (&d.ids, d.names.len()));
    let mut per_domain: Vec<(Vec<GateUtilisation>, usize)> = Vec::new();
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
        if let Some((ids, count)) = domain_ids {
            if per_domain.is_empty() {
                per_domain = vec![(util.clone(), 0); count];
                for (u, _) in &mut per_domain {
                    for g in u.iter_mut() {
                        g.mean_weight.iter_mut().for_each(|m| *m = 0.0);
                    }
                }
            }
            let batch_rows = &rows[seen..seen + batch.rows()];
            for &r in batch_rows {
                per_domain[ids[r] as usize].1 += 1;
            }
            for (gi, g) in out.gates.iter().enumerate() {
                let w: Vec<Vec<f32>> = g.weights.to_vec2()?;
                for (&r, row) in batch_rows.iter().zip(&w) {
                    let acc = &mut per_domain[ids[r] as usize].0[gi].mean_weight;
                    for (m, v) in acc.iter_mut().zip(row) {
                        *m += f64::from(*v);
                    }
                }
            }
        }
        seen += batch.rows();
    }
    for u in &mut util {
        for m in &mut u.mean_weight {
            *m /= seen.max(1) as f64;
        }
    }
    for (u, n) in &mut per_domain {
        if *n == 0 {
            u.clear();
        }
        for g in u.iter_mut() {
            g.mean_weight.iter_mut().for_each(|m| *m /= *n as f64);
        }
    }
    Ok(Run {
        outputs,
        utilisation: util,
        domain_utilisation: per_domain,
    })
}

/// The metrics of task `task` (column `t`) on `rows` with outputs `out`.
fn task_metrics(task: &TaskInfo, t: usize, data: &Dataset, rows: &[usize], out: &[f32]) -> Result<TaskResult> {
    let k = data.task_count();
    let labels: Vec<f32> = rows.iter().map(|&r| data.labels[r * k + t]).collect();
    let mask: Vec<f32> = rows.iter().map(|&r| data.masks[r * k + t]).collect();
    let metrics = match task.kind {
        TaskKind::Binary => TaskMetrics::binary_from_logits(out, &labels, Some(&mask))?,
        TaskKind::Regression => TaskMetrics::regression(out, &labels, Some(&mask))?,
    };
    Ok(TaskResult {
        task: task.name.clone(),
        metrics,
    })
}

/// Metrics of every task on `rows` (each task over its own labelled rows).
/// For data with domains, also the domain x task grid: every task's metrics
/// on each domain's rows, and the expert utilisation per domain.
pub fn evaluate(model: &Model, data: &Dataset, rows: &[usize], batch_size: usize) -> Result<Evaluation> {
    let run = run(model, data, rows, batch_size)?;
    let tasks = model
        .tasks()
        .iter()
        .zip(&run.outputs)
        .enumerate()
        .map(|(t, (task, out))| task_metrics(task, t, data, rows, out))
        .collect::<Result<Vec<_>>>()?;
    let mut domains = Vec::new();
    if let Some(dc) = &data.domains {
        let mut domain_util = run.domain_utilisation.into_iter();
        for (p, name) in dc.names.iter().enumerate() {
            // Positions (into `rows`) of this domain's rows.
            let at: Vec<usize> = (0..rows.len()).filter(|&i| dc.ids[rows[i]] as usize == p).collect();
            let drows: Vec<usize> = at.iter().map(|&i| rows[i]).collect();
            let cells = model
                .tasks()
                .iter()
                .zip(&run.outputs)
                .enumerate()
                .map(|(t, (task, out))| {
                    let dout: Vec<f32> = at.iter().map(|&i| out[i]).collect();
                    task_metrics(task, t, data, &drows, &dout)
                })
                .collect::<Result<Vec<_>>>()?;
            domains.push(DomainResult {
                domain: name.clone(),
                rows: drows.len(),
                tasks: cells,
                utilisation: domain_util.next().map(|(u, _)| u).unwrap_or_default(),
            });
        }
    }
    Ok(Evaluation {
        tasks,
        utilisation: run.utilisation,
        domains,
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;
    use mtrec_core::{GraphSpec, NodeSpec, INPUT};
    use mtrec_data::{Dataset, MultiDomainSynthetic};

    use super::*;

    /// A small MMoE from the core's built-in kinds (experts, one gate and one
    /// tower per task), built for `data`.
    fn model(data: &Dataset) -> Model {
        let mut nodes = vec![NodeSpec::new("experts", "mlp-experts")
            .input(INPUT)
            .param("count", 3)
            .param("units", [8])];
        for t in &data.tasks {
            nodes.push(
                NodeSpec::new(format!("gate-{}", t.name), "softmax-gate")
                    .input(INPUT)
                    .experts(["experts"]),
            );
            nodes.push(
                NodeSpec::new(format!("tower-{}", t.name), "mlp-tower")
                    .input(format!("gate-{}", t.name))
                    .task(&t.name),
            );
        }
        let domains = data.domains.as_ref().map_or(0, |d| d.names.len());
        Model::build(
            &GraphSpec { nodes },
            &data.features(4),
            &data.tasks,
            domains,
            1,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn multi_domain(rows: usize) -> Dataset {
        MultiDomainSynthetic {
            rows,
            ..MultiDomainSynthetic::default()
        }
        .generate()
        .unwrap()
    }

    #[test]
    fn domain_by_task_grid_for_multi_domain_data() {
        let data = multi_domain(600);
        let m = model(&data);
        let rows: Vec<usize> = (0..600).rev().collect();
        let ev = evaluate(&m, &data, &rows, 64).unwrap();
        let names: Vec<&str> = ev.domains.iter().map(|d| d.domain.as_str()).collect();
        assert_eq!(names, ["domain0", "domain1", "domain2"]);
        assert_eq!(ev.domains.iter().map(|d| d.rows).collect::<Vec<_>>(), [420, 150, 30]);
        let ids = &data.domains.as_ref().unwrap().ids;
        for (p, d) in ev.domains.iter().enumerate() {
            let tasks: Vec<&str> = d.tasks.iter().map(|t| t.task.as_str()).collect();
            assert_eq!(tasks, ["click", "like"]);
            // Each cell equals the evaluation of the domain's rows alone.
            let own: Vec<usize> = rows.iter().copied().filter(|&r| ids[r] as usize == p).collect();
            let alone = evaluate(&m, &data, &own, 64).unwrap();
            for (cell, whole) in d.tasks.iter().zip(&alone.tasks) {
                assert_eq!(cell.metrics.rows, d.rows);
                assert!(cell.metrics.auc.is_some() && cell.metrics.logloss.is_some());
                assert!((cell.metrics.auc.unwrap() - whole.metrics.auc.unwrap()).abs() < 1e-6);
                assert!((cell.metrics.logloss.unwrap() - whole.metrics.logloss.unwrap()).abs() < 1e-5);
            }
            // Utilisation per domain: every gate, weights summing to 1, the
            // same as the whole-set utilisation of the domain's rows.
            assert_eq!(d.utilisation.len(), 2);
            for (g, whole) in d.utilisation.iter().zip(&alone.utilisation) {
                assert!((g.mean_weight.iter().sum::<f64>() - 1.0).abs() < 1e-4);
                for (a, b) in g.mean_weight.iter().zip(&whole.mean_weight) {
                    assert!((a - b).abs() < 1e-5, "{g:?} vs {whole:?}");
                }
            }
        }
        // The overall utilisation is the row-weighted mean of the domains'.
        for (gi, g) in ev.utilisation.iter().enumerate() {
            for (e, w) in g.mean_weight.iter().enumerate() {
                let mix: f64 = ev
                    .domains
                    .iter()
                    .map(|d| d.utilisation[gi].mean_weight[e] * d.rows as f64)
                    .sum::<f64>()
                    / 600.0;
                assert!((mix - w).abs() < 1e-5);
            }
        }
        // The score is still the mean over tasks of the whole-set metric.
        let mean_auc = (ev.tasks[0].metrics.auc.unwrap() + ev.tasks[1].metrics.auc.unwrap()) / 2.0;
        assert!((ev.score() - mean_auc).abs() < 1e-12);
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"domains\"") && json.contains("\"domain2\""));
        let back: Evaluation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn single_class_cell_has_no_auc_and_absent_domain_no_metrics() {
        let mut data = multi_domain(300);
        let k = data.task_count();
        let ids = data.domains.as_ref().unwrap().ids.clone();
        for (r, &p) in ids.iter().enumerate() {
            if p == 2 {
                data.labels[r * k] = 0.0;
            }
        }
        let data = Dataset::new(
            data.tasks.clone(),
            data.sparse.clone(),
            data.dense.clone(),
            data.labels.clone(),
            data.masks.clone(),
            data.domains.clone(),
        )
        .unwrap();
        let m = model(&data);
        let all: Vec<usize> = (0..300).collect();
        let ev = evaluate(&m, &data, &all, 128).unwrap();
        let cell = &ev.domains[2].tasks[0].metrics;
        assert_eq!(cell.rows, 15);
        assert!(cell.auc.is_none() && cell.logloss.is_some());
        assert!(ev.domains[2].tasks[1].metrics.auc.is_some());
        // Rows of domain 0 only: the other domains are listed without rows.
        let only0: Vec<usize> = all.iter().copied().filter(|&r| ids[r] == 0).collect();
        let ev = evaluate(&m, &data, &only0, 128).unwrap();
        assert_eq!(ev.domains.len(), 3);
        assert_eq!(ev.domains[1].rows, 0);
        assert_eq!(ev.domains[1].tasks[0].metrics.rows, 0);
        assert!(ev.domains[1].tasks[0].metrics.logloss.is_none());
        assert!(ev.domains[1].utilisation.is_empty());
        assert!(!ev.domains[0].utilisation.is_empty());
    }

    #[test]
    fn no_domains_no_grid() {
        let d = multi_domain(100);
        let data = Dataset::new(d.tasks, d.sparse, d.dense, d.labels, d.masks, None).unwrap();
        let m = model(&data);
        let rows: Vec<usize> = (0..100).collect();
        let ev = evaluate(&m, &data, &rows, 50).unwrap();
        assert!(ev.domains.is_empty());
        let json = serde_json::to_string(&ev).unwrap();
        assert!(!json.contains("\"domains\""), "{json}");
    }
}
