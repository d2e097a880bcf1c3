//! The single-task baseline as K independent models: a run of architecture
//! `single-task` with K > 1 tasks trains K one-task runs of the same config,
//! each exactly what `[[tasks]]` restricted to that task would train (its own
//! embedding tables and input layer, parameters drawn from the same
//! `train.seed` as such a run draws them, the same batches, its own early
//! stopping on its own validation metric and its own best weights), and
//! reports them as one model: metrics per task and per domain x task joined
//! column by column, no gates.
//!
//! The data is read once; each task's run sees it with only its own labels
//! ([`mtrec_data::Dataset::only_task`], [`Preprocessor::only_task`]), which is
//! what the one-task config reads (the other tasks' label columns then
//! unused, hence listed in its `[data] ignore`).
//!
//! Run folder: `config.toml` (the whole config) and `preprocess.json` (every
//! task) at the top, written before training, `report.json` (the joined
//! report) at the end, and under `tasks/<task>/` one complete run folder per
//! task (its one-task `config.toml`, graph, checkpoints, history, best
//! weights, report, plots), so that each task resumes, and `predict`,
//! `eval` and `serve` load the K models ([`super::layout::load_trained`]).

use std::path::{Path, PathBuf};

use mtrec_data::{Preprocessor, StreamedData};
use mtrec_train::{Report, TaskOutcome, TrainOutcome};

use super::layout::{has_checkpoint, open_run_folder, write, CHECKPOINT_DIR};
use super::{run_prepared, RunOptions, RunResult, CONFIG_FILE, PREPROCESS_FILE, REPORT_FILE};
use crate::config::LoadedConfig;
use crate::error::{encode, Result, RunError};
use crate::source::{Prepared, Rows};

/// The architecture trained as K independent one-task models.
pub const SINGLE_TASK: &str = "single-task";

/// The folder of a single-task run that holds one run folder per task.
pub const TASKS_DIR: &str = "tasks";

/// The run folder of task `task` inside single-task run folder `dir`.
pub fn task_dir(dir: &Path, task: &str) -> PathBuf {
    dir.join(TASKS_DIR).join(task)
}

/// Whether `cfg` on `prepared` is run as independent one-task models.
pub(super) fn applies(cfg: &LoadedConfig, prepared: &Prepared) -> bool {
    cfg.config.model.arch == SINGLE_TASK && prepared.tasks.len() > 1
}

/// The data of task `k` alone, as a one-task config of it reads it.
fn only_task(prepared: &Prepared, k: usize) -> Result<Prepared> {
    let missing = || RunError::Usage(format!("no task #{k} in the data"));
    let preprocessor = match &prepared.preprocessor {
        Some(p) => Some(p.only_task(k).ok_or_else(missing)?),
        None => None,
    };
    let rows = match &prepared.rows {
        Rows::Memory { data, split } => Rows::Memory {
            data: data.only_task(k)?,
            split: split.clone(),
        },
        Rows::Streamed(data) => {
            let pre = data.preprocessor.only_task(k).ok_or_else(missing)?;
            let mut only = StreamedData::new(pre, data.files.clone(), data.options)?;
            only.train_stripe = data.train_stripe;
            Rows::Streamed(only)
        }
    };
    let mut resolved = prepared.resolved.clone();
    if let Some(p) = &preprocessor {
        let ignore = p.ignore.iter().cloned().map(toml::Value::String).collect();
        resolved.insert("ignore".into(), toml::Value::Array(ignore));
    }
    Ok(Prepared {
        rows,
        tasks: vec![prepared.tasks.get(k).ok_or_else(missing)?.clone()],
        domains: prepared.domains.clone(),
        features: prepared.features.clone(),
        resolved,
        generated: prepared.generated,
        preprocessor,
        base: prepared.base.clone(),
        shards: prepared.shards,
        parts: prepared.parts.clone(),
    })
}

/// `cfg` for task `task` alone: `[[tasks]]` (when the config lists them)
/// and `[train] task_weights` restricted to it.
fn config_for(cfg: &LoadedConfig, task: &str) -> LoadedConfig {
    let mut c = cfg.clone();
    c.config.tasks.retain(|t| t.name == task);
    c.config.train.task_weights.retain(|name, _| name == task);
    c
}

/// Trains the K one-task models (in task order) and joins their reports.
pub(super) fn run(
    cfg: &LoadedConfig,
    prepared: Prepared,
    mut opts: RunOptions<'_>,
    mut on_epoch: impl FnMut(&mtrec_train::EpochLog),
) -> Result<RunResult> {
    let root = crate::distributed::is_root();
    let names: Vec<String> = prepared.tasks.iter().map(|t| t.name.clone()).collect();
    // Keys naming tasks are checked against every task, before any is dropped.
    cfg.config
        .train
        .validate(&names)
        .map_err(|e| cfg.error("train", None, e))?;
    let mut resolved = cfg.config.clone();
    resolved.data.params = prepared.resolved.clone();
    resolved.model.params = cfg.arch_params.table().clone();
    resolved.data.data_dir = prepared.base.clone();
    if let (Some(dir), false, true) = (&opts.out, opts.resume, root) {
        let text = toml::to_string(&resolved).map_err(|e| encode("the resolved config")(&e))?;
        write(&dir.join(CONFIG_FILE), text.as_bytes())?;
        if let Some(p) = &prepared.preprocessor {
            p.save(&dir.join(PREPROCESS_FILE))?;
        }
    }
    let mut results = Vec::with_capacity(names.len());
    for (k, name) in names.iter().enumerate() {
        let task_prepared = only_task(&prepared, k)?;
        let out = opts.out.as_ref().map(|dir| task_dir(dir, name));
        // A task whose run had not finished an epoch starts afresh.
        let resume = opts.resume && out.as_deref().is_some_and(has_checkpoint);
        let _lock = match out.as_ref().filter(|_| root) {
            Some(dir) => Some(open_run_folder(dir, resume)?),
            None => None,
        };
        let task_opts = RunOptions {
            out,
            resume,
            on_read: None,
            on_batch: opts.on_batch.as_deref_mut().map(|f| f as _),
            on_test: opts.on_test.as_deref_mut().map(|f| f as _),
            init_from: None,
        };
        results.push(run_prepared(
            &config_for(cfg, name),
            task_prepared,
            task_opts,
            None,
            &mut on_epoch,
        )?);
    }
    let report = joined_report(cfg, &prepared, &results)?;
    if let Some(dir) = opts.out.as_ref().filter(|_| root) {
        let json = serde_json::to_string_pretty(&report).map_err(|e| encode("the report")(&e))?;
        write(&dir.join(REPORT_FILE), json.as_bytes())?;
        crate::folder::unify_permissions(dir)?;
    }
    Ok(RunResult {
        report,
        resolved,
        models: results.into_iter().flat_map(|r| r.models).collect(),
        preprocessor: prepared.preprocessor,
    })
}

/// One report of the K one-task runs: every split's metrics joined task by
/// task, the parameters and training time summed, each task's outcome kept.
fn joined_report(cfg: &LoadedConfig, prepared: &Prepared, results: &[RunResult]) -> Result<Report> {
    let join = |split: fn(&Report) -> &mtrec_train::Evaluation| {
        mtrec_train::Evaluation::concat_tasks(results.iter().map(|r| split(&r.report).clone()).collect())
    };
    let rows = results
        .first()
        .map(|r| r.report.rows.clone())
        .ok_or(RunError::NoTrainingRows)?;
    let task_outcomes: Vec<TaskOutcome> = results
        .iter()
        .flat_map(|r| {
            r.report.tasks.iter().map(|t| TaskOutcome {
                task: t.name.clone(),
                outcome: r.report.outcome.clone(),
            })
        })
        .collect();
    Ok(Report {
        arch: cfg.config.model.arch.clone(),
        parameters: results.iter().map(|r| r.report.parameters).sum(),
        tasks: prepared.tasks.clone(),
        rows,
        train: join(|r| &r.train)?,
        valid: join(|r| &r.valid)?,
        test: join(|r| &r.test)?,
        outcome: TrainOutcome {
            history: Vec::new(),
            best_epoch: 0,
            stopped_early: task_outcomes.iter().all(|t| t.outcome.stopped_early),
            train_seconds: task_outcomes.iter().map(|t| t.outcome.train_seconds).sum(),
            conflict: Vec::new(),
        },
        task_outcomes,
    })
}

/// Whether run folder `dir` is a single-task run of independent models.
pub fn is_independent(dir: &Path) -> bool {
    dir.join(TASKS_DIR).is_dir() && !dir.join(CHECKPOINT_DIR).exists()
}

/// The one-task run folders of single-task run folder `dir`, in the task
/// order of its preprocessing.
pub(super) fn task_dirs(dir: &Path, pre: &Preprocessor) -> Vec<PathBuf> {
    pre.tasks.iter().map(|t| task_dir(dir, &t.name)).collect()
}
