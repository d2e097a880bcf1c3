//! Several architectures on the same data and the same seeds: test metric
//! mean and spread per task, as the papers compare models.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

use crate::config::{self, LoadedConfig, ModelSection};
use crate::error::Result;
use crate::run::run;

/// One architecture's results over the seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchSummary {
    pub arch: String,
    pub parameters: usize,
    /// Per task: the test metric (AUC for binary tasks, MSE for regression) of each seed.
    pub tasks: Vec<TaskSummary>,
    /// For data with domains: per domain, the same per task (the domain x
    /// task grid of every run, summarised over the seeds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DomainSummary {
    pub domain: String,
    pub tasks: Vec<TaskSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: String,
    /// `auc` or `mse`.
    pub metric: String,
    pub values: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub std: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub seeds: Vec<u64>,
    pub archs: Vec<ArchSummary>,
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
        cfg.config.model = model.clone();
        let mut parameters = 0;
        let mut per_task: Vec<TaskSummary> = Vec::new();
        let mut per_domain: Vec<DomainSummary> = Vec::new();
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
            collect(&mut per_task, &r.report.test.tasks);
            for (j, d) in r.report.test.domains.iter().enumerate() {
                if per_domain.len() <= j {
                    per_domain.push(DomainSummary {
                        domain: d.domain.clone(),
                        tasks: Vec::new(),
                    });
                }
                collect(&mut per_domain[j].tasks, &d.tasks);
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
                        t.metrics
                            .auc
                            .or(t.metrics.mse)
                            .map_or("-".into(), |v| format!("{v:.4}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for t in per_task
            .iter_mut()
            .chain(per_domain.iter_mut().flat_map(|d| d.tasks.iter_mut()))
        {
            (t.mean, t.std) = mean_std(&t.values);
        }
        out.push(ArchSummary {
            arch: arch.clone(),
            parameters,
            tasks: per_task,
            domains: per_domain,
        });
    }
    Ok(Comparison {
        seeds: seeds.to_vec(),
        archs: out,
    })
}

/// Appends one run's test metric of each task to `into` (one summary per task).
fn collect(into: &mut Vec<TaskSummary>, tasks: &[mtrec_train::TaskResult]) {
    for (i, t) in tasks.iter().enumerate() {
        let (metric, v) = match (t.metrics.auc, t.metrics.mse) {
            (Some(a), _) => ("auc", a),
            (None, Some(m)) => ("mse", m),
            // A cell without the metric (one class among its rows) counts as NaN.
            _ => ("none", f64::NAN),
        };
        if into.len() <= i {
            into.push(TaskSummary {
                task: t.task.clone(),
                metric: metric.into(),
                values: vec![],
                mean: 0.0,
                std: 0.0,
            });
        }
        into[i].values.push(v);
    }
}

/// The models to compare: the `[model]` section of each of `model_configs`
/// (sized by their authors), then one per architecture of `archs`: the base
/// config's own model when it has that architecture, else the template's
/// defaults. Overrides (`--set model.x=..`) do not apply here.
pub fn models_for(base: &LoadedConfig, archs: &[String], model_configs: &[PathBuf]) -> Result<Vec<ModelSection>> {
    let mut models = Vec::new();
    for file in model_configs {
        models.push(config::load(file, &[])?.config.model);
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

impl Comparison {
    /// A Markdown table: one row per architecture, `mean ± std` per task, and
    /// the MTL gain over single-task where single-task was run.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let Some(first) = self.archs.first() else {
            return s;
        };
        let single = self.archs.iter().find(|a| a.arch == "single-task");
        let _ = write!(s, "| model | parameters |");
        for t in &first.tasks {
            let _ = write!(s, " {} test {} |", t.task, t.metric);
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
                    // Gain is "better than single-task": higher AUC, lower MSE.
                    let gain = if t.metric == "mse" {
                        base - t.mean
                    } else {
                        t.mean - base
                    };
                    let _ = write!(s, " {gain:+.4} |");
                }
            }
            s.push('\n');
        }
        if first.domains.iter().any(|d| !d.tasks.is_empty()) {
            let _ = write!(s, "\nPer domain (test rows of each domain):\n\n| model | domain |");
            for t in &first.tasks {
                let _ = write!(s, " {} test {} |", t.task, t.metric);
            }
            s.push('\n');
            s.push_str(&"|---".repeat(2 + first.tasks.len()));
            s.push_str("|\n");
            for a in &self.archs {
                for d in &a.domains {
                    let _ = write!(s, "| {} | {} |", a.arch, d.domain);
                    for t in &d.tasks {
                        let _ = write!(s, " {:.4} ± {:.4} |", t.mean, t.std);
                    }
                    s.push('\n');
                }
            }
        }
        let _ = writeln!(
            s,
            "\n{} seeds ({}); mean ± sample standard deviation of the test metric.",
            self.seeds.len(),
            self.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        );
        s
    }
}
