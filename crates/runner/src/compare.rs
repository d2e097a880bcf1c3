//! Several architectures on the same data and the same seeds: test metric
//! mean and spread per task (and per domain x task when the data has
//! domains), the MTL gain over single-task, as the papers compare models.
//! Single-task, the reference of every gain, is always run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, LoadedConfig, ModelSection};
use crate::error::{io, Result, RunError};
use crate::plot::bar_chart;
use crate::run::run;

/// The architecture every MTL gain is measured against (K independent
/// one-task models: `crate::run::independent`).
pub use crate::run::SINGLE_TASK;

/// One architecture's results over the seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchSummary {
    pub arch: String,
    pub parameters: usize,
    /// Per task: the test metric (AUC for binary tasks, MSE for regression) of each seed.
    pub tasks: Vec<TaskSummary>,
    /// For data with domains: per domain, the same per task on the
    /// domain's test rows. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainSummary>,
    /// For data with a group column (`[data] group`): per binary task, the
    /// test GAUC of each seed (metric `gauc`). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gauc: Vec<TaskSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: String,
    /// `auc` or `mse`.
    pub metric: String,
    /// One per seed that had the metric (a domain's test rows may hold one
    /// class in a seed: no AUC there).
    pub values: Vec<f64>,
    /// Mean of `values`; NaN (`null` in JSON) without values.
    #[serde(deserialize_with = "null_as_nan")]
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed, NaN without values).
    #[serde(deserialize_with = "null_as_nan")]
    pub std: f64,
}

/// JSON has no NaN: serde_json writes it as `null`; this reads it back.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DomainSummary {
    pub domain: String,
    pub tasks: Vec<TaskSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub seeds: Vec<u64>,
    pub archs: Vec<ArchSummary>,
    /// Single-task was not asked for and was added as the reference.
    #[serde(default)]
    pub single_task_added: bool,
    /// Every metric weighs the test rows by their sample weights (the
    /// config's `[eval] weighted`); always written, so that no figure of
    /// `compare.json` is ambiguous.
    #[serde(default)]
    pub weighted: bool,
}

pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The compared metric of a task result: its headline metric.
fn metric_of(t: &mtrec_train::TaskResult) -> (&'static str, Option<f64>) {
    let h = t.metrics.headline();
    (h.name, h.value)
}

/// Adds one seed's task results to the per-task summaries (task order).
fn collect(summaries: &mut Vec<TaskSummary>, results: &[mtrec_train::TaskResult], kinds: &[&'static str]) {
    collect_with(summaries, results, kinds, metric_of);
}

/// [`collect`] of the metric `measure` picks.
fn collect_with<'r>(
    summaries: &mut Vec<TaskSummary>,
    results: impl IntoIterator<Item = &'r mtrec_train::TaskResult>,
    kinds: &[&'static str],
    measure: impl Fn(&mtrec_train::TaskResult) -> (&'static str, Option<f64>),
) {
    for (i, t) in results.into_iter().enumerate() {
        let (measured, v) = measure(t);
        if summaries.len() <= i {
            summaries.push(TaskSummary {
                task: t.task.clone(),
                metric: kinds.get(i).copied().unwrap_or(measured).into(),
                values: vec![],
                mean: 0.0,
                std: 0.0,
            });
        }
        if let Some(v) = v {
            summaries[i].values.push(v);
        }
    }
}

fn finish(summaries: &mut [TaskSummary]) {
    for t in summaries {
        (t.mean, t.std) = if t.values.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            mean_std(&t.values)
        };
    }
}

/// Runs every model for every seed. Seed `s` sets `train.seed` and, for
/// generated data, the generator's `seed` (new data and new initialisation
/// per seed, as in the MMoE paper's repeated runs). Each model is a
/// `[model]` section: see [`models_for`].
pub fn compare(
    base: &LoadedConfig,
    models: &[ModelSection],
    seeds: &[u64],
    mut progress: impl FnMut(&str),
) -> Result<Comparison> {
    let mut out = Vec::new();
    for model in models {
        let arch = &model.arch;
        let mut cfg = base.clone();
        cfg.set_model(model.clone())?;
        let mut parameters = 0;
        let mut per_task: Vec<TaskSummary> = Vec::new();
        let mut per_domain: Vec<DomainSummary> = Vec::new();
        let mut gauc: Vec<TaskSummary> = Vec::new();
        for &seed in seeds {
            let mut c = cfg.clone();
            c.config.train.seed = seed;
            if c.config.data.source.ends_with("synthetic") {
                c.config
                    .data
                    .params
                    .insert("seed".into(), toml::Value::Integer(seed as i64));
            }
            let r = run(&c, |_| {})?;
            parameters = r.report.parameters;
            // The metric follows the task's kind, also where a domain lacks it.
            let kinds: Vec<&'static str> = r
                .report
                .tasks
                .iter()
                .map(|t| match t.kind {
                    mtrec_core::TaskKind::Binary => "auc",
                    _ => "mse",
                })
                .collect();
            collect(&mut per_task, &r.report.test.tasks, &kinds);
            if r.report.test.tasks.iter().any(|t| t.metrics.gauc.is_some()) {
                let binary = r
                    .report
                    .test
                    .tasks
                    .iter()
                    .zip(&kinds)
                    .filter(|(_, k)| **k == "auc")
                    .map(|(t, _)| t);
                collect_with(&mut gauc, binary, &[], |t| ("gauc", t.metrics.gauc));
            }
            for (d, dr) in r.report.test.domains.iter().enumerate() {
                if per_domain.len() <= d {
                    per_domain.push(DomainSummary {
                        domain: dr.domain.clone(),
                        tasks: vec![],
                    });
                }
                collect(&mut per_domain[d].tasks, &dr.tasks, &kinds);
            }
            progress(&format!(
                "{arch} seed {seed}: {}",
                r.report
                    .test
                    .tasks
                    .iter()
                    .map(|t| format!(
                        "{} {}",
                        t.task,
                        metric_of(t).1.map_or("-".into(), |v| format!("{v:.4}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        finish(&mut per_task);
        finish(&mut gauc);
        for d in &mut per_domain {
            finish(&mut d.tasks);
        }
        out.push(ArchSummary {
            arch: arch.clone(),
            parameters,
            tasks: per_task,
            domains: per_domain,
            gauc,
        });
    }
    Ok(Comparison {
        seeds: seeds.to_vec(),
        archs: out,
        single_task_added: false,
        weighted: base.config.eval.weighted,
    })
}

/// Puts single-task first in `models` when it is not there; returns
/// whether it was added. The MTL gain of every other model is measured
/// against it.
pub fn ensure_single_task(models: &mut Vec<ModelSection>) -> bool {
    if models.iter().any(|m| m.arch == SINGLE_TASK) {
        return false;
    }
    models.insert(
        0,
        ModelSection {
            arch: SINGLE_TASK.into(),
            params: toml::Table::new(),
        },
    );
    true
}

/// `mtrec compare` as a library call: the models of [`models_for`] with
/// single-task added when missing, run over `seeds`, and, with `out`, the
/// results written there ([`Comparison::write`]).
pub fn compare_and_write(
    base: &LoadedConfig,
    archs: &[String],
    model_configs: &[PathBuf],
    seeds: &[u64],
    out: Option<&Path>,
    mut progress: impl FnMut(&str),
) -> Result<(Comparison, Vec<PathBuf>)> {
    if seeds.is_empty() {
        return Err(RunError::Usage("--seeds must be at least 1".into()));
    }
    let mut models = models_for(base, archs, model_configs)?;
    let added = ensure_single_task(&mut models);
    if added {
        progress("single-task added: it is the reference of the MTL gain columns");
    }
    let mut cmp = compare(base, &models, seeds, &mut progress)?;
    cmp.single_task_added = added;
    let written = match out {
        Some(dir) => cmp.write(dir)?,
        None => Vec::new(),
    };
    Ok((cmp, written))
}

/// The models to compare: the `[model]` section of each of `model_configs`
/// (sized by their authors), then one per architecture of `archs`: the base
/// config's own model when it has that architecture, else the template's
/// defaults. Overrides (`--set model.x=..`) do not apply here.
pub fn models_for(base: &LoadedConfig, archs: &[String], model_configs: &[PathBuf]) -> Result<Vec<ModelSection>> {
    let mut models = Vec::new();
    for file in model_configs {
        models.push(config::load_model(file)?);
    }
    for arch in archs {
        mtrec_core::registry::architecture(arch)?;
        models.push(if &base.config.model.arch == arch {
            base.config.model.clone()
        } else {
            ModelSection {
                arch: arch.clone(),
                params: toml::Table::new(),
            }
        });
    }
    Ok(models)
}

/// "Better than single-task": higher AUC, lower MSE.
fn gain(metric: &str, value: f64, single: f64) -> f64 {
    if metric == "mse" {
        single - value
    } else {
        value - single
    }
}

impl Comparison {
    /// Markdown: one row per architecture, `mean ± std` per task and the MTL
    /// gain over single-task; with domains, a second table per domain x task.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let Some(first) = self.archs.first() else {
            return s;
        };
        let single = self.archs.iter().find(|a| a.arch == SINGLE_TASK);
        let _ = write!(s, "| model | parameters |");
        for t in &first.tasks {
            let _ = write!(
                s,
                " {} test {}{} |",
                t.task,
                t.metric,
                if self.weighted { " (weighted)" } else { "" }
            );
            if single.is_some() {
                let _ = write!(s, " {} gain |", t.task);
            }
        }
        s.push('\n');
        let cols = 2 + first.tasks.len() * if single.is_some() { 2 } else { 1 };
        s.push_str(&"|---".repeat(cols));
        s.push_str("|\n");
        for a in &self.archs {
            let _ = write!(s, "| {} | {} |", a.arch, a.parameters);
            for (i, t) in a.tasks.iter().enumerate() {
                let _ = write!(s, " {:.4} ± {:.4} |", t.mean, t.std);
                if let Some(st) = single {
                    let base = st.tasks.get(i).map_or(f64::NAN, |b| b.mean);
                    let _ = write!(s, " {:+.4} |", gain(&t.metric, t.mean, base));
                }
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\n{} seeds ({}); mean ± sample standard deviation of the test metric{}; gain: how much better than single-task (higher AUC, lower MSE).",
            self.seeds.len(),
            self.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
            if self.weighted {
                " (weighted: every row counts with its sample weight)"
            } else {
                ""
            }
        );
        if self.single_task_added {
            s.push_str("single-task was added as the reference (not in the list asked for).\n");
        }
        if !first.gauc.is_empty() {
            s.push_str(if self.weighted {
                "\nGAUC (weighted; test rows; mean of per-group weighted AUC, groups weighed by their weight sums):\n\n| model |"
            } else {
                "\nGAUC (test rows; impression-weighted mean of per-group AUC):\n\n| model |"
            });
            for t in &first.gauc {
                let _ = write!(s, " {} test gauc |", t.task);
                if single.is_some() {
                    let _ = write!(s, " {} gain |", t.task);
                }
            }
            s.push('\n');
            s.push_str(&"|---".repeat(1 + first.gauc.len() * if single.is_some() { 2 } else { 1 }));
            s.push_str("|\n");
            for a in &self.archs {
                let _ = write!(s, "| {} |", a.arch);
                for (i, t) in a.gauc.iter().enumerate() {
                    let _ = write!(s, " {:.4} ± {:.4} |", t.mean, t.std);
                    if let Some(st) = single {
                        let base = st.gauc.get(i).map_or(f64::NAN, |b| b.mean);
                        let _ = write!(s, " {:+.4} |", gain("gauc", t.mean, base));
                    }
                }
                s.push('\n');
            }
        }
        if !first.domains.is_empty() {
            s.push_str(if self.weighted {
                "\nPer domain (weighted; test rows of each domain):\n\n| model |"
            } else {
                "\nPer domain (test rows of each domain):\n\n| model |"
            });
            let mut cols = 1;
            for d in &first.domains {
                for t in &d.tasks {
                    let _ = write!(s, " {} / {} {} |", d.domain, t.task, t.metric);
                    cols += 1;
                }
            }
            s.push('\n');
            s.push_str(&"|---".repeat(cols));
            s.push_str("|\n");
            for a in &self.archs {
                let _ = write!(s, "| {} |", a.arch);
                for d in &a.domains {
                    for t in &d.tasks {
                        if t.values.is_empty() {
                            s.push_str(" - |");
                        } else {
                            let _ = write!(s, " {:.4} ± {:.4} |", t.mean, t.std);
                        }
                    }
                }
                s.push('\n');
            }
        }
        s
    }

    /// Grouped bar charts (PNG + SVG), one per metric: per task
    /// (`compare-<metric>`) and, with domains, per domain x task
    /// (`compare-domains-<metric>`); bars are the models, whiskers the std.
    pub fn charts(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        let Some(first) = self.archs.first() else {
            return Ok(written);
        };
        let mut metrics: Vec<&str> = first.tasks.iter().map(|t| t.metric.as_str()).collect();
        metrics.dedup();
        let label = |m: &str| format!("test {}", m.to_uppercase());
        let seeds = self.seeds.len();
        // The cells of one chart: (group label, summary) of an architecture.
        let cells = |a: &ArchSummary, per_domain: bool| -> Vec<(String, TaskSummary)> {
            if per_domain {
                a.domains
                    .iter()
                    .flat_map(|d| {
                        d.tasks
                            .iter()
                            .map(|t| (format!("{} / {}", d.domain, t.task), t.clone()))
                    })
                    .collect()
            } else {
                a.tasks.iter().map(|t| (t.task.clone(), t.clone())).collect()
            }
        };
        for metric in metrics {
            for (per_domain, stem, what) in [
                (false, "compare", "per task"),
                (true, "compare-domains", "per domain and task"),
            ] {
                if per_domain && first.domains.is_empty() {
                    continue;
                }
                let of_metric = |a: &ArchSummary| cells(a, per_domain).into_iter().filter(|(_, t)| t.metric == metric);
                let groups: Vec<String> = of_metric(first).map(|(g, _)| g).collect();
                let bars: Vec<(String, Vec<(f64, f64)>)> = self
                    .archs
                    .iter()
                    .map(|a| (a.arch.clone(), of_metric(a).map(|(_, t)| (t.mean, t.std)).collect()))
                    .collect();
                written.extend(bar_chart(
                    &dir.join(format!("{stem}-{metric}")),
                    &format!("{} {what} (mean ± std over {seeds} seeds)", label(metric)),
                    &label(metric),
                    &groups,
                    &bars,
                )?);
            }
        }
        Ok(written)
    }

    /// Writes `compare.md`, `compare.json` (atomically) and the bar charts
    /// into `dir`; returns the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let md = dir.join("compare.md");
        mtrec_core::atomic::write_bytes(&md, self.markdown().as_bytes())?;
        let json_path = dir.join("compare.json");
        let json = serde_json::to_string_pretty(self).map_err(|e| crate::error::encode("the comparison")(&e))?;
        mtrec_core::atomic::write_bytes(&json_path, json.as_bytes())?;
        let mut written = vec![md, json_path];
        written.extend(self.charts(dir)?);
        Ok(written)
    }
}
