//! Evaluation: per-task metrics over a set of rows, and expert utilisation;
//! for data with domains, the same per domain (a domain x task grid).

use mtrec_core::{Model, TaskInfo, TaskKind};
use mtrec_data::{Batch, Dataset};
use serde::{Deserialize, Serialize};

use std::rc::Rc;

use mtrec_distributed::Collective;

use crate::error::{Result, TrainError};
use crate::eval_shard::{merge, EvalPart};
use crate::metrics::TaskMetrics;
use crate::sync::dist_error;

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

/// The `[eval]` section of a config: how the evaluation metrics are
/// computed, for validation (early stopping) and for the report alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Every metric weighs each row by its sample weight (the data's
    /// weight column, `[data] weight`): [`crate::metrics::weighted_auc`],
    /// `sum w l / sum w` for logloss and MSE, GAUC over groups weighed by
    /// their weight sums, per domain alike. Off by default: the weights
    /// then scale only the training loss.
    pub weighted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    /// Whether every metric below is weighted by the rows' sample weights
    /// ([`EvalConfig::weighted`]); always written, so that no figure of a
    /// report is ambiguous (older reports without it read as `false`).
    #[serde(default)]
    pub weighted: bool,
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
    let mut outputs: Vec<Vec<f32>> = vec![Vec::with_capacity(rows.len()); model.tasks().len()];
    for batch in data.batches(rows, batch_size.max(1), model.device()) {
        for (acc, o) in outputs.iter_mut().zip(batch_outputs(model, &batch?)?) {
            acc.extend(o);
        }
    }
    Ok(outputs)
}

/// Model outputs of one batch in eval mode: per task, one value per row.
pub fn batch_outputs(model: &Model, batch: &Batch) -> Result<Vec<Vec<f32>>> {
    let out = model.forward(&batch.inputs, false)?;
    out.outputs.iter().map(|o| Ok(o.to_vec1::<f32>()?)).collect()
}

/// Evaluation fed batch by batch, so that the evaluated rows need not be in
/// memory at once (streamed files): per task it keeps only the output and
/// label of each labelled row (8 bytes per row and task, +4 with domains,
/// +8 with a group column: the row's group id for GAUC, +4 for weighted
/// metrics: the row's weight), which exact AUC and GAUC need; gate weights
/// are summed as they come.
/// [`evaluate`] is this over a dataset's rows, so the same rows in the same
/// batches give identical metrics either way.
///
/// In a distributed run ([`mtrec_distributed::current`] has several ranks)
/// every rank is handed every batch and runs the model on its share (batch
/// i on rank `i % ranks`); [`Evaluator::finish`] gathers the kept rows of
/// all ranks in batch order (`crate::eval_shard`), so every rank returns the
/// metrics of all rows.
pub struct Evaluator<'m> {
    model: &'m Model,
    /// Names of the data's domains (empty without domains).
    domain_names: Vec<String>,
    /// Per task, over its labelled rows in order: output, label, domain id.
    outputs: Vec<Vec<f32>>,
    labels: Vec<Vec<f32>>,
    domains: Vec<Vec<u32>>,
    /// Per task, the labelled rows' group ids (batches with groups).
    groups: Vec<Vec<u64>>,
    /// Weighted metrics: per task, the labelled rows' sample weights.
    weighted: bool,
    weights: Vec<Vec<f32>>,
    utilisation: Vec<GateUtilisation>,
    /// Per domain: gate weight sums like `utilisation`, and rows summed.
    per_domain: Vec<(Vec<GateUtilisation>, usize)>,
    /// Rows this rank ran the model on.
    rows_run: usize,
    collective: Rc<dyn Collective>,
    /// Batches handed over so far (all ranks' shares) and their rows.
    batches_seen: usize,
    rows: usize,
    /// Per batch run here: its index and labelled rows per task.
    segments: Vec<(u32, Vec<u32>)>,
    /// Every rank evaluates its own rows (each rank holds other rows:
    /// its part of the training rows) instead of a share of the same rows.
    own_rows: bool,
}

impl std::fmt::Debug for Evaluator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").field("rows", &self.rows_run).finish()
    }
}

impl<'m> Evaluator<'m> {
    /// An evaluator of `model` on data with these domains (`None`: none),
    /// unweighted metrics.
    pub fn new(model: &'m Model, domain_names: Option<&[String]>) -> Self {
        Self::with_config(model, domain_names, EvalConfig::default())
    }

    /// [`Evaluator::new`] with these options: with `weighted`, every batch
    /// added must carry row weights ([`Batch::weights`]).
    pub fn with_config(model: &'m Model, domain_names: Option<&[String]>, eval: EvalConfig) -> Self {
        let k = model.tasks().len();
        Self {
            model,
            domain_names: domain_names.map(<[String]>::to_vec).unwrap_or_default(),
            outputs: vec![Vec::new(); k],
            labels: vec![Vec::new(); k],
            domains: vec![Vec::new(); k],
            groups: vec![Vec::new(); k],
            weighted: eval.weighted,
            weights: vec![Vec::new(); k],
            utilisation: Vec::new(),
            per_domain: Vec::new(),
            rows_run: 0,
            collective: mtrec_distributed::current(),
            batches_seen: 0,
            rows: 0,
            segments: Vec::new(),
            own_rows: false,
        }
    }

    /// An evaluator to which every rank hands its own rows (its part of the
    /// training rows, `[data] shards`): each rank runs every batch it is
    /// given, and [`Evaluator::finish`] gathers all ranks' rows (rank r's
    /// batch j counted as the evaluation's batch `j * ranks + r`).
    pub fn of_own_rows(model: &'m Model, domain_names: Option<&[String]>, eval: EvalConfig) -> Self {
        Self {
            own_rows: true,
            ..Self::with_config(model, domain_names, eval)
        }
    }

    /// Rows added so far (on every rank: all ranks' rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the next batch is this rank's to run (always with one rank):
    /// callers that form batches can skip forming the others' and hand
    /// their row counts to [`Evaluator::skip`].
    pub fn takes_next(&self) -> bool {
        self.own_rows || self.batches_seen % self.collective.size() == self.collective.rank()
    }

    /// Counts another rank's batch of `rows` rows without running it.
    pub fn skip(&mut self, rows: usize) {
        self.batches_seen += 1;
        self.rows += rows;
    }

    /// Runs the model on a batch and adds its rows (another rank's batch in
    /// a distributed run: only counted).
    pub fn add(&mut self, batch: &Batch) -> Result<()> {
        if !self.takes_next() {
            self.skip(batch.rows());
            return Ok(());
        }
        let index = if self.own_rows {
            (self.batches_seen * self.collective.size() + self.collective.rank()) as u32
        } else {
            self.batches_seen as u32
        };
        self.skip(batch.rows());
        let before: Vec<usize> = self.outputs.iter().map(Vec::len).collect();
        let out = self.model.forward(&batch.inputs, false)?;
        let b = batch.rows();
        let labels: Vec<f32> = batch.labels.flatten_all()?.to_vec1()?;
        let masks: Vec<f32> = batch.masks.flatten_all()?.to_vec1()?;
        let ids: Option<&[u32]> = batch.inputs.domains.as_ref().map(|d| d.ids());
        let weights: Option<Vec<f32>> = match (&batch.weights, self.weighted) {
            (Some(w), true) => Some(w.to_vec1()?),
            (None, true) => {
                // The runner refuses `[eval] weighted` without `[data]
                // weight`; this guards other callers of the library.
                return Err(TrainError::Invalid(
                    "weighted evaluation needs the rows' weights, and a batch has none (a weight column: `[data] weight`)"
                        .into(),
                ));
            }
            (_, false) => None,
        };
        let k = self.outputs.len();
        for (t, o) in out.outputs.iter().enumerate() {
            let o: Vec<f32> = o.to_vec1()?;
            for r in 0..b {
                if masks[r * k + t] > 0.0 {
                    self.outputs[t].push(o[r]);
                    self.labels[t].push(labels[r * k + t]);
                    if let Some(ids) = ids {
                        self.domains[t].push(ids[r]);
                    }
                    if let Some(g) = &batch.groups {
                        self.groups[t].push(g[r]);
                    }
                    if let Some(w) = &weights {
                        self.weights[t].push(w[r]);
                    }
                }
            }
        }
        if self.utilisation.is_empty() {
            self.utilisation = out
                .gates
                .iter()
                .map(|g| GateUtilisation {
                    gate: g.node.clone(),
                    experts: g.experts.clone(),
                    mean_weight: vec![0.0; g.experts.len()],
                })
                .collect();
        }
        for (u, g) in self.utilisation.iter_mut().zip(&out.gates) {
            let sums: Vec<f32> = g.weights.sum(0)?.to_vec1()?;
            for (m, s) in u.mean_weight.iter_mut().zip(sums) {
                *m += s as f64;
            }
        }
        if let (Some(ids), false) = (ids, self.domain_names.is_empty()) {
            if self.per_domain.is_empty() {
                let mut zero = self.utilisation.clone();
                for g in &mut zero {
                    g.mean_weight.iter_mut().for_each(|m| *m = 0.0);
                }
                self.per_domain = vec![(zero, 0); self.domain_names.len()];
            }
            for &d in ids {
                self.per_domain[d as usize].1 += 1;
            }
            for (gi, g) in out.gates.iter().enumerate() {
                let w: Vec<Vec<f32>> = g.weights.to_vec2()?;
                for (&d, row) in ids.iter().zip(&w) {
                    let acc = &mut self.per_domain[d as usize].0[gi].mean_weight;
                    for (m, v) in acc.iter_mut().zip(row) {
                        *m += f64::from(*v);
                    }
                }
            }
        }
        self.rows_run += b;
        let counts = self
            .outputs
            .iter()
            .zip(&before)
            .map(|(o, b)| (o.len() - b) as u32)
            .collect();
        self.segments.push((index, counts));
        Ok(())
    }

    /// Replaces this rank's kept rows and sums by those of all ranks.
    fn gather(&mut self) -> Result<()> {
        let part = EvalPart {
            segments: std::mem::take(&mut self.segments),
            outputs: std::mem::take(&mut self.outputs),
            labels: std::mem::take(&mut self.labels),
            domains: std::mem::take(&mut self.domains),
            groups: std::mem::take(&mut self.groups),
            weights: std::mem::take(&mut self.weights),
            utilisation: std::mem::take(&mut self.utilisation),
            per_domain: std::mem::take(&mut self.per_domain),
            rows: self.rows_run,
        };
        let gathered = self.collective.all_gather(&part.to_bytes()?).map_err(dist_error)?;
        let parts = gathered
            .iter()
            .enumerate()
            .map(|(r, b)| EvalPart::from_bytes(b, r))
            .collect::<Result<Vec<_>>>()?;
        let all = merge(&parts, self.model.tasks().len())?;
        self.segments = all.segments;
        self.outputs = all.outputs;
        self.labels = all.labels;
        self.domains = all.domains;
        self.groups = all.groups;
        self.weights = all.weights;
        self.utilisation = all.utilisation;
        self.per_domain = all.per_domain;
        self.rows_run = all.rows;
        if self.own_rows {
            self.rows = all.rows;
        }
        Ok(())
    }

    /// Task `t`'s kept group ids, when every kept row has one (the batches
    /// came with a group column).
    fn task_groups(&self, t: usize) -> Option<&[u64]> {
        let g = &self.groups[t];
        (!g.is_empty() && g.len() == self.outputs[t].len()).then_some(g.as_slice())
    }

    /// Task `t`'s kept weights, for weighted metrics (every kept row has
    /// one: [`Evaluator::add`] refuses a batch without weights).
    fn task_weights(&self, t: usize) -> Option<&[f32]> {
        self.weighted.then_some(self.weights[t].as_slice())
    }

    /// The metrics of every task over the rows added (each task over its
    /// own labelled rows), and for data with domains the domain x task grid
    /// and the utilisation per domain.
    pub fn finish(mut self) -> Result<Evaluation> {
        if self.collective.size() > 1 {
            self.gather()?;
        }
        for u in &mut self.utilisation {
            for m in &mut u.mean_weight {
                *m /= self.rows_run.max(1) as f64;
            }
        }
        let tasks = self
            .model
            .tasks()
            .iter()
            .enumerate()
            .map(|(t, task)| {
                task_metrics(
                    task,
                    &self.outputs[t],
                    &self.labels[t],
                    self.task_groups(t),
                    self.task_weights(t),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut domains = Vec::new();
        if !self.domain_names.is_empty() {
            if self.per_domain.is_empty() {
                self.per_domain = vec![(Vec::new(), 0); self.domain_names.len()];
            }
            let per_domain = std::mem::take(&mut self.per_domain);
            for (p, (name, (mut util, n))) in self.domain_names.iter().zip(per_domain).enumerate() {
                if n == 0 {
                    util.clear();
                }
                for g in &mut util {
                    g.mean_weight.iter_mut().for_each(|m| *m /= n as f64);
                }
                let cells = self
                    .model
                    .tasks()
                    .iter()
                    .enumerate()
                    .map(|(t, task)| {
                        let here: Vec<usize> = (0..self.domains[t].len())
                            .filter(|&i| self.domains[t][i] as usize == p)
                            .collect();
                        let out: Vec<f32> = here.iter().map(|&i| self.outputs[t][i]).collect();
                        let labels: Vec<f32> = here.iter().map(|&i| self.labels[t][i]).collect();
                        let groups = self
                            .task_groups(t)
                            .map(|g| here.iter().map(|&i| g[i]).collect::<Vec<u64>>());
                        let weights = self
                            .task_weights(t)
                            .map(|w| here.iter().map(|&i| w[i]).collect::<Vec<f32>>());
                        task_metrics(task, &out, &labels, groups.as_deref(), weights.as_deref())
                    })
                    .collect::<Result<Vec<_>>>()?;
                domains.push(DomainResult {
                    domain: name.clone(),
                    rows: n,
                    tasks: cells,
                    utilisation: util,
                });
            }
        }
        Ok(Evaluation {
            weighted: self.weighted,
            tasks,
            utilisation: self.utilisation,
            domains,
        })
    }
}

/// The metrics of a task from its labelled rows' outputs and labels (and
/// group ids: GAUC for a binary task; weights: weighted metrics).
fn task_metrics(
    task: &TaskInfo,
    out: &[f32],
    labels: &[f32],
    groups: Option<&[u64]>,
    weights: Option<&[f32]>,
) -> Result<TaskResult> {
    let metrics = match (task.kind, weights) {
        (TaskKind::Binary, None) => {
            let m = TaskMetrics::binary_from_logits(out, labels, None)?;
            match groups {
                Some(g) => m.with_gauc(out, labels, g)?,
                None => m,
            }
        }
        (TaskKind::Binary, Some(w)) => {
            let m = TaskMetrics::binary_from_logits_weighted(out, labels, w)?;
            match groups {
                Some(g) => m.with_weighted_gauc(out, labels, g, w)?,
                None => m,
            }
        }
        (TaskKind::Regression, None) => TaskMetrics::regression(out, labels, None)?,
        (TaskKind::Regression, Some(w)) => TaskMetrics::regression_weighted(out, labels, w)?,
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
    evaluate_with(model, data, rows, batch_size, EvalConfig::default())
}

/// [`evaluate`] with these options (weighted metrics: `data` must have
/// weights).
pub fn evaluate_with(
    model: &Model,
    data: &Dataset,
    rows: &[usize],
    batch_size: usize,
    eval: EvalConfig,
) -> Result<Evaluation> {
    let names = data.domains.as_ref().map(|d| d.names.as_slice());
    let mut ev = Evaluator::with_config(model, names, eval);
    for chunk in rows.chunks(batch_size.max(1)) {
        if ev.takes_next() {
            ev.add(&data.batch(chunk, model.device())?)?;
        } else {
            // Another rank's batch: not formed here.
            ev.skip(chunk.len());
        }
    }
    ev.finish()
}

/// [`evaluate`] where every rank passes its own `rows` (its part of the
/// training rows, `[data] shards`): the metrics of all ranks' rows.
pub fn evaluate_own_rows(
    model: &Model,
    data: &Dataset,
    rows: &[usize],
    batch_size: usize,
    eval: EvalConfig,
) -> Result<Evaluation> {
    let names = data.domains.as_ref().map(|d| d.names.as_slice());
    let mut ev = Evaluator::of_own_rows(model, names, eval);
    for chunk in rows.chunks(batch_size.max(1)) {
        ev.add(&data.batch(chunk, model.device())?)?;
    }
    ev.finish()
}

/// [`evaluate`] over batches of rows that arrive one dataset at a time
/// (e.g. [`mtrec_data::Batches`] of a streamed file); the same rows in the
/// same batches give the same metrics as [`evaluate`].
pub fn evaluate_batches(
    model: &Model,
    batches: impl Iterator<Item = mtrec_data::Result<Dataset>>,
    domain_names: Option<&[String]>,
) -> Result<Evaluation> {
    evaluate_batches_with(model, batches, domain_names, EvalConfig::default())
}

/// [`evaluate_batches`] with these options.
pub fn evaluate_batches_with(
    model: &Model,
    batches: impl Iterator<Item = mtrec_data::Result<Dataset>>,
    domain_names: Option<&[String]>,
    eval: EvalConfig,
) -> Result<Evaluation> {
    let mut ev = Evaluator::with_config(model, domain_names, eval);
    for batch in batches {
        let batch = batch?;
        if ev.takes_next() {
            ev.add(&batch.to_batch(model.device())?)?;
        } else {
            // Another rank's batch: read (the stream is shared), not run.
            ev.skip(batch.rows());
        }
    }
    ev.finish()
}

impl Evaluation {
    /// The evaluations of models with disjoint tasks on the same rows, as
    /// one: tasks (and each domain's cells) in the order of `parts`, gates
    /// of every part. The single-task baseline's K one-task models are
    /// reported this way. Every part must hold the same domains.
    pub fn concat_tasks(parts: Vec<Evaluation>) -> Result<Evaluation> {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else {
            return Ok(Evaluation {
                weighted: false,
                tasks: Vec::new(),
                utilisation: Vec::new(),
                domains: Vec::new(),
            });
        };
        for part in parts {
            let same = part.weighted == all.weighted
                && part.domains.len() == all.domains.len()
                && part
                    .domains
                    .iter()
                    .zip(&all.domains)
                    .all(|(a, b)| a.domain == b.domain && a.rows == b.rows);
            if !same {
                return Err(crate::TrainError::Invalid(
                    "evaluations joined task by task must cover the same domains and rows, weighted alike".into(),
                ));
            }
            all.tasks.extend(part.tasks);
            all.utilisation.extend(part.utilisation);
            for (d, p) in all.domains.iter_mut().zip(part.domains) {
                d.tasks.extend(p.tasks);
                d.utilisation.extend(p.utilisation);
            }
        }
        Ok(all)
    }

    /// The early-stopping score, higher is better: the mean over tasks of AUC
    /// (binary) or -MSE (regression).
    pub fn score(&self) -> f64 {
        let vals: Vec<f64> = self.tasks.iter().filter_map(|t| t.metrics.headline().score()).collect();
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
    use mtrec_data::{Dataset, MultiDomainSynthetic};

    use super::*;

    fn model(data: &Dataset) -> Model {
        crate::check::small_mmoe(data, 4, 1).unwrap()
    }

    fn multi_domain(rows: usize) -> Dataset {
        MultiDomainSynthetic {
            rows,
            ..MultiDomainSynthetic::default()
        }
        .generate()
        .unwrap()
    }

    /// An evaluation cut task by task (gates with the first part) joins
    /// back into the whole: tasks and every domain's cells in order.
    #[test]
    fn concat_tasks_joins_column_by_column() {
        let data = multi_domain(300);
        let whole = evaluate(&model(&data), &data, &(0..300).collect::<Vec<_>>(), 64).unwrap();
        let part = |k: usize| Evaluation {
            weighted: false,
            tasks: vec![whole.tasks[k].clone()],
            utilisation: if k == 0 { whole.utilisation.clone() } else { vec![] },
            domains: whole
                .domains
                .iter()
                .map(|d| DomainResult {
                    tasks: vec![d.tasks[k].clone()],
                    utilisation: if k == 0 { d.utilisation.clone() } else { vec![] },
                    ..d.clone()
                })
                .collect(),
        };
        assert_eq!(whole.tasks.len(), 2);
        assert_eq!(Evaluation::concat_tasks(vec![part(0), part(1)]).unwrap(), whole);
        let mut other = part(1);
        other.domains.pop();
        assert!(Evaluation::concat_tasks(vec![part(0), other]).is_err());
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

    /// GAUC of one task from the model's outputs on `rows`, computed here
    /// independently of the evaluator (labelled rows picked by the masks).
    fn gauc_by_hand(m: &Model, data: &Dataset, rows: &[usize], task: usize) -> Option<(f64, usize)> {
        let out = predict(m, data, rows, 7).unwrap();
        let (k, groups) = (data.task_count(), data.groups.as_ref().unwrap());
        let kept: Vec<usize> = (0..rows.len())
            .filter(|&i| data.masks[rows[i] * k + task] > 0.0)
            .collect();
        let scores: Vec<f32> = kept.iter().map(|&i| out[task][i]).collect();
        let labels: Vec<f32> = kept.iter().map(|&i| data.labels[rows[i] * k + task]).collect();
        let g: Vec<u64> = kept.iter().map(|&i| groups[rows[i]]).collect();
        crate::metrics::gauc(&scores, &labels, &g).unwrap()
    }

    #[test]
    fn gauc_per_task_and_domain_alike_in_memory_streamed_and_on_two_ranks() {
        // 200 users over 600 rows: about 3 rows per user, many with one class.
        let data = multi_domain(600).with_groups_from_field("user_id").unwrap();
        let m = model(&data);
        let rows: Vec<usize> = (0..600).rev().collect();
        let ev = evaluate(&m, &data, &rows, 64).unwrap();
        for (t, r) in ev.tasks.iter().enumerate() {
            let (g, n) = gauc_by_hand(&m, &data, &rows, t).unwrap();
            assert_eq!(r.metrics.gauc, Some(g), "task {t}");
            assert_eq!(r.metrics.gauc_groups, Some(n));
            assert!(n > 20 && n < 200, "{n} groups with both classes");
        }
        let ids = &data.domains.as_ref().unwrap().ids;
        for (p, d) in ev.domains.iter().enumerate() {
            let own: Vec<usize> = rows.iter().copied().filter(|&r| ids[r] as usize == p).collect();
            for (t, cell) in d.tasks.iter().enumerate() {
                assert_eq!(
                    cell.metrics.gauc,
                    gauc_by_hand(&m, &data, &own, t).map(|x| x.0),
                    "domain {p} task {t}"
                );
            }
        }
        // Streamed: the same rows arriving as datasets of 64 rows.
        let names = data.domains.as_ref().map(|d| d.names.as_slice());
        let parts = rows.chunks(64).map(|c| Ok(data.subset(c)));
        assert_eq!(evaluate_batches(&m, parts, names).unwrap(), ev);
        // Two ranks (threads): batches split, group ids gathered back.
        let evs = mtrec_distributed::ThreadRank::run(2, |c| {
            let _g = mtrec_distributed::install(Rc::new(c));
            let data = multi_domain(600).with_groups_from_field("user_id").unwrap();
            let rows: Vec<usize> = (0..600).rev().collect();
            evaluate(&model(&data), &data, &rows, 64).unwrap()
        });
        for e in evs {
            // Metrics come from the rows gathered in batch order: identical
            // (gate sums are added in rank order, so only close: not compared).
            assert_eq!(e.tasks, ev.tasks);
            for (a, b) in e.domains.iter().zip(&ev.domains) {
                assert_eq!(a.tasks, b.tasks);
            }
        }
        // report.json carries it; data without groups has none.
        assert!(serde_json::to_string(&ev).unwrap().contains("\"gauc\""));
        let plain = multi_domain(600);
        let ev = evaluate(&m, &plain, &rows, 64).unwrap();
        assert!(ev.tasks.iter().all(|t| t.metrics.gauc.is_none()));
        assert!(!serde_json::to_string(&ev).unwrap().contains("gauc"));
    }

    /// Weights 0, 0.5, ..., 3.5 by row (integers and halves, zeros too).
    fn weighted(data: Dataset) -> Dataset {
        let w = (0..data.rows()).map(|r| ((r * 5) % 8) as f32 * 0.5).collect();
        data.with_weights(w).unwrap()
    }

    #[test]
    fn weighted_metrics_per_task_and_domain_in_memory_streamed_and_on_two_ranks() {
        let data = weighted(multi_domain(600).with_groups_from_field("user_id").unwrap());
        let m = model(&data);
        let rows: Vec<usize> = (0..600).rev().collect();
        let on = EvalConfig { weighted: true };
        let ev = evaluate_with(&m, &data, &rows, 64, on).unwrap();
        assert!(ev.weighted);
        let out = predict(&m, &data, &rows, 7).unwrap();
        let (k, w, ids) = (
            data.task_count(),
            data.weights.as_ref().unwrap(),
            &data.domains.as_ref().unwrap().ids,
        );
        let groups = data.groups.as_ref().unwrap();
        // Every cell is the weighted metrics of its rows, picked here by
        // hand from the model's outputs (all rows are labelled).
        let by_hand = |t: usize, keep: &dyn Fn(usize) -> bool| {
            let kept: Vec<usize> = (0..rows.len()).filter(|&i| keep(rows[i])).collect();
            let s: Vec<f32> = kept.iter().map(|&i| out[t][i]).collect();
            let y: Vec<f32> = kept.iter().map(|&i| data.labels[rows[i] * k + t]).collect();
            let ws: Vec<f32> = kept.iter().map(|&i| w[rows[i]]).collect();
            let g: Vec<u64> = kept.iter().map(|&i| groups[rows[i]]).collect();
            TaskMetrics::binary_from_logits_weighted(&s, &y, &ws)
                .unwrap()
                .with_weighted_gauc(&s, &y, &g, &ws)
                .unwrap()
        };
        for t in 0..k {
            assert_eq!(ev.tasks[t].metrics, by_hand(t, &|_| true), "task {t}");
            for (p, d) in ev.domains.iter().enumerate() {
                assert_eq!(
                    d.tasks[t].metrics,
                    by_hand(t, &|r| ids[r] as usize == p),
                    "domain {p} task {t}"
                );
            }
        }
        let unweighted = evaluate(&m, &data, &rows, 64).unwrap();
        assert!(!unweighted.weighted);
        assert_ne!(ev.tasks[0].metrics.auc, unweighted.tasks[0].metrics.auc);
        // The early-stopping score is the weighted one.
        let mean_auc = (ev.tasks[0].metrics.auc.unwrap() + ev.tasks[1].metrics.auc.unwrap()) / 2.0;
        assert_eq!(ev.score(), mean_auc);
        // Streamed: the same rows as datasets of 64 rows, weights with them.
        let names = data.domains.as_ref().map(|d| d.names.as_slice());
        let parts = rows.chunks(64).map(|c| Ok(data.subset(c)));
        assert_eq!(evaluate_batches_with(&m, parts, names, on).unwrap(), ev);
        // Two ranks (threads): the weights travel with the kept rows.
        let evs = mtrec_distributed::ThreadRank::run(2, |c| {
            let _g = mtrec_distributed::install(Rc::new(c));
            let data = weighted(multi_domain(600).with_groups_from_field("user_id").unwrap());
            let rows: Vec<usize> = (0..600).rev().collect();
            evaluate_with(&model(&data), &data, &rows, 64, EvalConfig { weighted: true }).unwrap()
        });
        for e in evs {
            assert!(e.weighted);
            assert_eq!(e.tasks, ev.tasks);
            for (a, b) in e.domains.iter().zip(&ev.domains) {
                assert_eq!(a.tasks, b.tasks);
            }
        }
        // Weights all 1: the unweighted metrics exactly (plus the weight sum).
        let ones = data.clone().with_weights(vec![1.0; 600]).unwrap();
        let ev1 = evaluate_with(&m, &ones, &rows, 64, on).unwrap();
        let plain = evaluate(&m, &ones, &rows, 64).unwrap();
        let strip = |r: &TaskResult| TaskMetrics {
            weight: None,
            ..r.metrics
        };
        for (a, b) in ev1.tasks.iter().zip(&plain.tasks) {
            assert_eq!(strip(a), b.metrics);
            assert_eq!(a.metrics.weight, Some(600.0));
        }
        // report.json says so; weighted evaluation of data without weights
        // is an error, not unweighted figures.
        assert!(serde_json::to_string(&ev).unwrap().contains("\"weighted\":true"));
        let plain_data = multi_domain(100);
        let e = evaluate_with(&m, &plain_data, &[0, 1, 2], 64, on).unwrap_err();
        assert!(e.to_string().contains("weight"), "{e}");
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
