//! One run, orchestrated: config -> data -> graph -> model -> training ->
//! evaluation -> report, writing the run folder as it goes. The folder's
//! files and the way back from them are in [`layout`]; prediction and
//! evaluation of new files from a run folder in [`predict`].
//!
//! A run folder holds, each written atomically:
//! - `config.toml`: the resolved config (every default written out), written
//!   before training so that `--resume` finds it;
//! - `graph.toml`: the expanded graph;
//! - `preprocess.json`: vocabularies and scaling fitted on the training rows
//!   (tabular data);
//! - `checkpoint/`: weights, optimizer state, loss-balancer state and history
//!   after every epoch;
//! - `history.jsonl`: one JSON line per finished epoch (the `EpochLog`:
//!   losses, validation metrics, balancer weights, gradient conflict),
//!   appended as training goes (rewritten from the checkpoint on resume);
//! - `model.safetensors`: the best epoch's weights, and `report.json`;
//! - plots (PNG + SVG): `train-loss`, `valid-metric`, `grad-cosine`,
//!   `utilisation` and, with domains, `utilisation-<gate>` (domain x expert);
//! - `run.lock` while the run lives: one run per folder, temporary files of
//!   killed saves removed at the next start (`crate::folder`).
//!
//! A `single-task` run with K > 1 tasks trains K independent one-task runs
//! ([`independent`]): the folder then holds `config.toml`, `preprocess.json`
//! and `report.json` (every task) at the top and one complete run folder per
//! task under `tasks/<task>/`.
//!
//! Before training, a run refuses what would train silently wrong:
//! `[train] batch_size = 1` with a node normalising by batch statistics
//! ([`check_batch_statistics`]), and validation rows on which no task has a
//! metric ([`check_validation_metrics`]).

use std::path::PathBuf;

use candle_core::Device;
use mtrec_core::{registry, GraphEnv, GraphSpec, Model, TaskInfo, TaskKind};
use mtrec_data::preprocess::Progress;
use mtrec_data::{Dataset, Fitting, LabelCount, Part, Preprocessor};
use mtrec_train::{
    evaluate_own_rows, evaluate_with, train_on, BatchProgress, Checkpointer, EpochLog, EvalConfig, Evaluation,
    Evaluator, InMemory, Report, SplitRows, Streamed, TrainOptions, TrainSource,
};

use crate::config::{self, LoadedConfig, RunConfig};
use crate::error::{encode, io, Result, RunError};
use crate::source::{prepare, stream_options, Prepared, Rows, DEFAULT_TRAIN_EVAL_ROWS};

pub mod independent;
pub mod layout;
pub mod predict;

pub use independent::{task_dir, SINGLE_TASK, TASKS_DIR};
use layout::{append_history, open_run_folder, resume_error, write};
pub use layout::{
    default_run_dir, has_checkpoint, load_run_config, load_trained, Trained, CHECKPOINT_DIR, CONFIG_FILE, GRAPH_FILE,
    HISTORY_FILE, PREPROCESS_FILE, REPORT_FILE, WEIGHTS_FILE,
};
pub use predict::{eval_file, eval_file_with, predict_file};

/// What a finished run hands back.
#[derive(Debug)]
pub struct RunResult {
    pub report: Report,
    pub resolved: RunConfig,
    /// The trained model; for the single-task baseline one per task, in
    /// task order (`independent`).
    pub models: Vec<TrainedModel>,
    pub preprocessor: Option<Preprocessor>,
}

/// One trained model of a run.
#[derive(Debug)]
pub struct TrainedModel {
    pub graph: GraphSpec,
    /// The trained weights (those of the best validation epoch).
    pub params: mtrec_core::ParamStore,
}

/// The per-epoch test hook of [`RunOptions::on_test`].
pub type OnTest<'a> = dyn FnMut(&EpochLog, &Evaluation) + 'a;

/// Where a run writes, and whether it continues an earlier one.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Run folder; `None`: nothing is written (e.g. inside `compare`).
    pub out: Option<PathBuf>,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    pub on_read: Option<&'a mut dyn FnMut(&Progress<'_>)>,
    pub on_batch: Option<&'a mut dyn FnMut(&BatchProgress)>,
    /// Called after every trained epoch with the test rows' evaluation of
    /// that epoch's weights (test curves, e.g. `reproduce`); one extra
    /// evaluation per epoch. Not called in a resumed run. Single-task:
    /// called by each task's model with its own task's evaluation.
    pub on_test: Option<&'a mut OnTest<'a>>,
    /// Warm start: begin from this trained run's weights and preprocessing
    /// instead of fresh ones (`mtrec run --init-from`).
    pub init_from: Option<InitFrom>,
}

/// A trained run to continue on new data ([`RunOptions::init_from`]).
#[derive(Clone, Debug)]
pub struct InitFrom {
    /// The trained run's folder.
    pub dir: PathBuf,
    /// Append the values first seen in the new training rows to the
    /// vocabularies (their embedding rows start fresh; trained rows keep
    /// their values); else unseen values are out-of-vocabulary as in serving.
    pub grow_vocabularies: bool,
    /// Start the optimizer from the run's last checkpoint (Adam moments and
    /// step counts, the tables' row states) instead of a fresh one. Not
    /// with `grow_vocabularies` (the saved table states have the trained
    /// rows only).
    pub optimizer: bool,
}

/// The trained run a warm start begins from: its model, weights and
/// preprocessing. Only a run trained on files, continued on files.
fn warm_source(cfg: &LoadedConfig, from: &InitFrom) -> Result<layout::Trained> {
    if !matches!(cfg.config.data.source.as_str(), "csv" | "parquet") {
        return Err(cfg.error(
            "data",
            Some("source"),
            "--init-from continues a model trained on files with new files: [data] source must be `csv` or `parquet`",
        ));
    }
    layout::load_trained(&from.dir)
}

/// The optimizer state a warm start continues: the trained run's last
/// checkpoint's.
fn warm_optimizer(from: &InitFrom) -> Result<PathBuf> {
    if from.grow_vocabularies {
        return Err(RunError::RunFolder {
            dir: from.dir.clone(),
            problem: "its optimizer state covers the trained vocabularies only: \
                      --init-optimizer cannot be used with --grow-vocabularies"
                .into(),
        });
    }
    let ckpt = mtrec_train::Checkpointer::new(from.dir.join(layout::CHECKPOINT_DIR));
    ckpt.last_optimizer()?.ok_or_else(|| RunError::RunFolder {
        dir: from.dir.clone(),
        problem: "has no checkpoint to take the optimizer state from (drop --init-optimizer for a fresh one)".into(),
    })
}

/// Expands the config's architecture into a graph for the given data;
/// also gives the architecture's parameters as run (every default written out).
pub fn expand(cfg: &LoadedConfig, prepared: &Prepared) -> Result<(GraphSpec, toml::Table)> {
    let m = &cfg.config.model;
    let arch = registry::architecture(&m.arch).map_err(|e| cfg.error("model", Some("arch"), e))?;
    let env = GraphEnv {
        input_width: prepared.features.width(),
        features: prepared.features.clone(),
        tasks: prepared.tasks.clone(),
        domains: prepared.domain_count(),
    };
    let origins = if m.arch == GRAPH_ARCH {
        Some(check_graph_nodes(cfg)?)
    } else {
        None
    };
    let mut graph = arch
        .expand_parsed(&cfg.arch_params, &env)
        .map_err(|e| cfg.model_error(e))?;
    if let Some(origins) = origins {
        for (node, origin) in graph.nodes.iter_mut().zip(origins) {
            node.origin = Some(origin);
        }
    }
    Ok((graph, cfg.arch_params.table().clone()))
}

/// The name of the config-only architecture (`[[model.nodes]]`).
pub const GRAPH_ARCH: &str = "graph";

/// For `arch = "graph"`: checks each node's own keys (`id`, `kind`,
/// `inputs`, `experts`, `task`) with errors naming the node and the key's
/// line, and returns each node's origin ("FILE line L" of its
/// `[[model.nodes]]` entry) for later graph errors.
fn check_graph_nodes(cfg: &LoadedConfig) -> Result<Vec<String>> {
    let Some(toml::Value::Array(nodes)) = cfg.config.model.params.get("nodes") else {
        // A missing or mistyped `nodes` is reported by the parse.
        return Ok(Vec::new());
    };
    let mut origins = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let at = config::key_path(&["model", "nodes"]).index(i);
        let id = node
            .get("id")
            .and_then(toml::Value::as_str)
            .map(|s| format!("graph node `{s}`"))
            .unwrap_or_else(|| format!("graph node #{}", i + 1));
        let err = |key: Option<&str>, message: String| {
            let path = key.map_or_else(|| at.clone(), |k| at.clone().key(k));
            cfg.error_at(&path, format!("{id}: {message}"))
        };
        let Some(table) = node.as_table() else {
            return Err(err(None, "a node must be a table ([[model.nodes]])".into()));
        };
        for key in ["id", "kind"] {
            match table.get(key) {
                None => return Err(err(None, format!("missing required key `{key}`"))),
                Some(toml::Value::String(_)) => {}
                Some(v) => {
                    return Err(err(
                        Some(key),
                        format!("invalid type: {} `{v}`, expected a string", v.type_str()),
                    ))
                }
            }
        }
        if let Some(v) = table.get("task") {
            if !v.is_str() {
                return Err(err(
                    Some("task"),
                    format!("invalid type: {} `{v}`, expected a task name (string)", v.type_str()),
                ));
            }
        }
        for key in ["inputs", "experts"] {
            if let Some(v) = table.get(key) {
                let ok = v.as_array().is_some_and(|a| a.iter().all(toml::Value::is_str));
                if !ok {
                    return Err(err(
                        Some(key),
                        format!("invalid type: {} `{v}`, expected a list of node ids", v.type_str()),
                    ));
                }
            }
        }
        origins.push(cfg.origin(&at));
    }
    Ok(origins)
}

/// Trains and evaluates one config. `on_epoch` sees every epoch's log (on
/// resume, the earlier epochs' logs first).
pub fn run(cfg: &LoadedConfig, on_epoch: impl FnMut(&EpochLog)) -> Result<RunResult> {
    run_with(cfg, RunOptions::default(), on_epoch)
}

/// Refuses `[train] batch_size = 1` for a graph with nodes that normalise by
/// batch statistics (STAR's `partitioned-norm`): a one-row batch has none, so
/// every row would be normalised with moving statistics that never update.
pub fn check_batch_statistics(cfg: &LoadedConfig, graph: &GraphSpec, batch_size: usize) -> Result<()> {
    let nodes = mtrec_star::batch_statistics_nodes(graph);
    if batch_size != 1 || nodes.is_empty() {
        return Ok(());
    }
    let list = nodes.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let star_hint = if cfg.config.model.arch == "star" {
        ", or drop the normalization with `norm = false` in [model]"
    } else {
        ""
    };
    Err(cfg.error(
        "train",
        Some("batch_size"),
        format!(
            "batch_size = 1 cannot train {list}, which normalises each domain's rows of a batch with their \
             batch mean and variance: one row has none, so the moving statistics used in evaluation would \
             never be fitted; set `batch_size` to 2 or more (batches of a few hundred rows give each domain \
             enough rows){star_hint}"
        ),
    ))
}

/// Why task `task` has no validation metric on rows with `count`, if it has none.
fn undefined_metric(task: &TaskInfo, count: LabelCount, weighted: bool) -> Option<String> {
    let n = count.labelled;
    // Weighted metrics see only the rows that weigh something.
    let rows = if weighted {
        "labelled validation rows of weight > 0"
    } else {
        "labelled validation rows"
    };
    match task.kind {
        _ if n == 0 => Some(format!("task `{}` has no {rows}", task.name)),
        TaskKind::Binary if !count.both_classes() => {
            let class = if count.positives == 0 { 0 } else { 1 };
            Some(format!(
                "task `{}`'s {n} {rows} are all of class {class} (AUC needs both classes)",
                task.name
            ))
        }
        _ => None,
    }
}

/// The validation rows' label counts per task, in task order (streamed
/// data: one pass over the validation file, labels only matter).
fn validation_label_counts(prepared: &Prepared, eval_batch_size: usize, weighted: bool) -> Result<Vec<LabelCount>> {
    let mut total = vec![LabelCount::default(); prepared.tasks.len()];
    let mut add = |counts: Vec<LabelCount>| {
        for (t, c) in total.iter_mut().zip(counts) {
            t.add(c);
        }
    };
    // Weighted metrics leave rows of weight 0 out.
    let count = |d: &Dataset, rows: Option<&[usize]>| {
        if weighted {
            d.weighted_label_counts(rows)
        } else {
            d.label_counts(rows)
        }
    };
    match &prepared.rows {
        Rows::Memory { data, split } => add(count(data, Some(&split.valid))?),
        Rows::Streamed(data) => {
            for batch in data.batches(Part::Valid, eval_batch_size, None) {
                add(count(&batch?, None)?);
            }
        }
    }
    Ok(total)
}

/// Refuses a run in which no task has a validation metric (the early-stopping
/// score would be -infinity every epoch: the first epoch "best", training
/// stopped after `patience` epochs, silently); warns when only some tasks
/// have none (early stopping then follows the others).
pub fn check_validation_metrics(cfg: &LoadedConfig, prepared: &Prepared, eval_batch_size: usize) -> Result<()> {
    let counts = validation_label_counts(prepared, eval_batch_size, cfg.config.eval.weighted)?;
    let undefined: Vec<String> = prepared
        .tasks
        .iter()
        .zip(counts)
        .filter_map(|(t, c)| undefined_metric(t, c, cfg.config.eval.weighted))
        .collect();
    if undefined.is_empty() {
        return Ok(());
    }
    if undefined.len() == prepared.tasks.len() {
        return Err(RunError::NoValidationMetric {
            file: cfg.file().to_path_buf(),
            tasks: undefined.join("; "),
        });
    }
    eprintln!(
        "warning: {}: {}: early stopping and the best epoch follow the other tasks only",
        cfg.file().display(),
        undefined.join("; ")
    );
    Ok(())
}

/// [`run`] with a run folder, checkpoints, resumption and progress hooks.
pub fn run_with(cfg: &LoadedConfig, opts: RunOptions<'_>, on_epoch: impl FnMut(&EpochLog)) -> Result<RunResult> {
    // Rank 0 alone writes the folder (distributed runs; see crate::distributed).
    let root = crate::distributed::is_root();
    // Held until the run ends (dropped on return, error or not).
    let _lock = match opts.out.as_ref().filter(|_| root) {
        Some(dir) => Some(open_run_folder(dir, opts.resume)?),
        None => None,
    };
    let trained = match &opts.init_from {
        Some(from) => Some(warm_source(cfg, from)?),
        None => None,
    };
    // A resumed run reads its files with the preprocessing it saved (a
    // warm-started run's is the trained run's, perhaps grown; a fresh run's
    // is what a refit would give).
    let saved = match opts.out.as_ref().filter(|_| opts.resume) {
        Some(dir) if dir.join(PREPROCESS_FILE).exists() => Some(Preprocessor::load(&dir.join(PREPROCESS_FILE))?),
        _ => None,
    };
    let fitting = match (&trained, &opts.init_from, &saved) {
        (_, _, Some(p)) => Fitting::Keep(p),
        (Some(t), Some(from), None) if from.grow_vocabularies => Fitting::Grow(&t.preprocessor),
        (Some(t), _, None) => Fitting::Keep(&t.preprocessor),
        _ => Fitting::Fresh,
    };
    let RunOptions {
        out,
        resume,
        on_read,
        on_batch,
        on_test,
        init_from,
    } = opts;
    let prepared = crate::source::prepare_fitted(cfg, on_read, fitting)?;
    let opts = RunOptions {
        out,
        resume,
        on_read: None,
        on_batch,
        on_test,
        init_from,
    };
    let warm = match (&trained, &opts.init_from) {
        (Some(t), Some(from)) => match t.models.as_slice() {
            [model] => Some(model),
            _ => {
                return Err(RunError::RunFolder {
                    dir: from.dir.clone(),
                    problem: "is a single-task run of several models: continue each task's model from its folder \
                              `tasks/<task>/` (with a one-task config)"
                        .into(),
                })
            }
        },
        _ => None,
    };
    if independent::applies(cfg, &prepared) {
        if opts.init_from.is_some() {
            return Err(cfg.error(
                "model",
                Some("arch"),
                "--init-from continues one model: a single-task run of several tasks trains one model per task; \
                 warm start each task's folder `tasks/<task>/` with a one-task config",
            ));
        }
        return independent::run(cfg, prepared, opts, on_epoch);
    }
    run_prepared(cfg, prepared, opts, warm, on_epoch)
}

/// [`run_with`] on data already read or generated (`opts.on_read` unused;
/// the folder already locked), starting from `warm`'s weights if given.
fn run_prepared(
    cfg: &LoadedConfig,
    prepared: Prepared,
    opts: RunOptions<'_>,
    warm: Option<&Model>,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<RunResult> {
    let root = crate::distributed::is_root();
    let (graph, model_params) = expand(cfg, &prepared)?;
    check_batch_statistics(cfg, &graph, cfg.config.train.batch_size)?;
    let mut train_cfg = cfg.config.train.clone();
    // Validation (early stopping) weighs rows as the report will.
    train_cfg.eval = cfg.config.eval;
    for t in &cfg.config.tasks {
        if t.weight != 1.0 && !train_cfg.task_weights.contains_key(&t.name) {
            train_cfg.task_weights.insert(t.name.clone(), t.weight);
        }
    }
    let model = Model::build(
        &graph,
        &prepared.features,
        &prepared.tasks,
        prepared.domain_count(),
        train_cfg.seed,
        &Device::Cpu,
    )
    .map_err(|e| cfg.model_error(e))?;
    if let (Some(trained), Some(from)) = (warm, &opts.init_from) {
        let done = mtrec_core::warm::copy_trained(trained, &model).map_err(|e| RunError::RunFolder {
            dir: from.dir.clone(),
            problem: format!("cannot continue its model with this config: {e}"),
        })?;
        if crate::distributed::is_root() {
            for (feature, old, new) in &done.grown {
                eprintln!("warm start: `{feature}` grew from {old} to {new} ids (new rows start fresh)");
            }
        }
    }
    let names: Vec<String> = prepared.tasks.iter().map(|t| t.name.clone()).collect();
    train_cfg.validate(&names).map_err(|e| cfg.error("train", None, e))?;
    check_validation_metrics(cfg, &prepared, train_cfg.eval_batch_size)?;

    let mut resolved = cfg.config.clone();
    resolved.data.params = prepared.resolved.clone();
    resolved.model.params = model_params;
    // The folder relative paths were read from, so that a resumed run reads
    // the same files (`[data] data_dir`).
    resolved.data.data_dir = prepared.base.clone();
    if let Some(o) = stream_options(cfg)? {
        // Every default written out, as for the other keys.
        resolved.data.chunk_rows = Some(o.chunk_rows);
        resolved.data.shuffle_buffer = Some(o.shuffle_buffer);
        resolved.data.train_eval_rows = Some(cfg.config.data.train_eval_rows.unwrap_or(DEFAULT_TRAIN_EVAL_ROWS));
    }
    crate::distributed::check_ranks_agree(&resolved, prepared.preprocessor.as_ref())?;
    let checkpoint = match &opts.out {
        Some(dir) => {
            if !opts.resume && root {
                let text = toml::to_string(&resolved).map_err(|e| encode("the resolved config")(&e))?;
                write(&dir.join(CONFIG_FILE), text.as_bytes())?;
                write(&dir.join(GRAPH_FILE), graph.to_toml()?.as_bytes())?;
                if let Some(p) = &prepared.preprocessor {
                    p.save(&dir.join(PREPROCESS_FILE))?;
                }
            }
            Some(Checkpointer::new(dir.join(CHECKPOINT_DIR)))
        }
        None => None,
    };
    let init_optimizer = match &opts.init_from {
        Some(from) if from.optimizer => Some(warm_optimizer(from)?),
        _ => None,
    };
    let train_opts = TrainOptions {
        checkpoint,
        resume: opts.resume,
        on_batch: opts.on_batch,
        init_optimizer,
    };
    // history.jsonl: truncated at the start (a resumed run replays its
    // earlier epochs first), then one line appended per epoch.
    let mut history_file = match opts.out.as_ref().filter(|_| root) {
        Some(dir) => {
            let path = dir.join(HISTORY_FILE);
            Some((std::fs::File::create(&path).map_err(io(&path))?, path))
        }
        None => None,
    };
    let mut history_error: Option<RunError> = None;
    let streamed = match &prepared.rows {
        Rows::Streamed(data) => Some(Streamed::new(data).with_parts(prepared.shards)),
        Rows::Memory { .. } => None,
    };
    let memory = match &prepared.rows {
        Rows::Memory { data, split } => {
            let source = InMemory::new(data, split);
            Some(match &prepared.parts {
                Some(parts) => source.with_parts(parts),
                None => source,
            })
        }
        Rows::Streamed(_) => None,
    };
    let source: &dyn TrainSource = match (&streamed, &memory) {
        (Some(s), _) => s,
        (None, Some(m)) => m,
        (None, None) => return Err(RunError::NoTrainingRows),
    };
    // A resumed run first replays its saved epochs, whose weights are gone:
    // test curves only for uninterrupted runs.
    let mut on_test = opts.on_test.filter(|_| !opts.resume);
    let eval_batch_size = train_cfg.eval_batch_size;
    let test_metrics = |model: &Model| -> Result<Evaluation> {
        match &prepared.rows {
            Rows::Memory { data, split } => Ok(evaluate_with(
                model,
                data,
                &split.test,
                eval_batch_size,
                train_cfg.eval,
            )?),
            Rows::Streamed(data) => Ok(eval_part(
                model,
                data.batches(Part::Test, eval_batch_size, None),
                prepared.domains.as_deref(),
                train_cfg.eval,
            )?
            .0),
        }
    };
    let outcome = train_on(&model, source, &train_cfg, train_opts, |log: &EpochLog| {
        if let (Some((f, path)), None) = (&mut history_file, &history_error) {
            if let Err(e) = append_history(f, path, log) {
                history_error = Some(e);
            }
        }
        if let (Some(f), None) = (on_test.as_mut(), &history_error) {
            match test_metrics(&model) {
                Ok(ev) => f(log, &ev),
                Err(e) => history_error = Some(e),
            }
        }
        on_epoch(log)
    })
    .map_err(|e| match (&opts.out, opts.resume) {
        (Some(dir), true) => resume_error(dir, e),
        _ => e.into(),
    })?;
    if let Some(e) = history_error {
        return Err(e);
    }
    let batch_size = train_cfg.eval_batch_size;
    let own_part_only = prepared.holds_own_part_only();
    let (rows, train, valid, test) = match &prepared.rows {
        Rows::Memory { data, split } => {
            let eval = |rows: &[usize]| evaluate_with(&model, data, rows, batch_size, train_cfg.eval);
            // A rank holding only its part of the training rows evaluates
            // them, and the ranks' rows are gathered.
            let (train, train_rows) = match &prepared.parts {
                Some(parts) if own_part_only => (
                    evaluate_own_rows(&model, data, &split.train, batch_size, train_cfg.eval)?,
                    parts.sizes.iter().sum(),
                ),
                _ => (eval(&split.train)?, split.train.len()),
            };
            let rows = SplitRows {
                train: train_rows,
                valid: split.valid.len(),
                test: split.test.len(),
            };
            (rows, train, eval(&split.valid)?, eval(&split.test)?)
        }
        Rows::Streamed(data) => {
            let names = prepared.domains.as_deref();
            let limit = cfg.config.data.train_eval_rows.unwrap_or(DEFAULT_TRAIN_EVAL_ROWS);
            let part = |p: Part| data.batches(p, batch_size, None);
            let ev = train_cfg.eval;
            let train = if own_part_only {
                // Each rank its share of the first `limit` rows, from its
                // own part, gathered.
                let ranks = mtrec_distributed::current().size();
                let mut own = Evaluator::of_own_rows(&model, names, ev);
                for batch in first_rows(part(Part::Train), limit.div_ceil(ranks)) {
                    own.add(&batch?.to_batch(model.device())?)?;
                }
                own.finish()?
            } else {
                eval_part(&model, first_rows(part(Part::Train), limit), names, ev)?.0
            };
            let (valid, valid_rows) = eval_part(&model, part(Part::Valid), names, ev)?;
            let (test, test_rows) = eval_part(&model, part(Part::Test), names, ev)?;
            // The train part's size: counted by the last epoch of this
            // session, else (nothing left to train after a resume) by a pass.
            let train_rows = match streamed.as_ref().and_then(Streamed::rows_read) {
                Some(n) => n,
                None => {
                    let own = data
                        .chunks(Part::Train)
                        .map(|c| c.map(|c| c.rows()))
                        .sum::<mtrec_data::Result<usize>>()?;
                    if own_part_only {
                        crate::distributed::sum_over_ranks(own)?
                    } else {
                        own
                    }
                }
            };
            let rows = SplitRows {
                train: train_rows,
                valid: valid_rows,
                test: test_rows,
            };
            (rows, train, valid, test)
        }
    };
    let report = Report {
        arch: cfg.config.model.arch.clone(),
        parameters: model.params().parameter_count(),
        tasks: prepared.tasks.clone(),
        rows,
        train,
        valid,
        test,
        outcome,
        task_outcomes: Vec::new(),
    };
    let params = model.params().clone();
    if let Some(dir) = opts.out.as_ref().filter(|_| root) {
        params.save(&dir.join(WEIGHTS_FILE))?;
        let json = serde_json::to_string_pretty(&report).map_err(|e| encode("the report")(&e))?;
        write(&dir.join(REPORT_FILE), json.as_bytes())?;
        // Plots are feedback: a drawing failure must not lose a finished run.
        if let Err(e) = crate::plot::run_plots(dir, &report) {
            eprintln!("warning: {e}");
        }
        crate::folder::unify_permissions(dir)?;
    }
    Ok(RunResult {
        report,
        resolved,
        models: vec![TrainedModel { graph, params }],
        preprocessor: prepared.preprocessor,
    })
}

/// The metrics of `batches` and the number of rows evaluated.
fn eval_part(
    model: &Model,
    batches: impl Iterator<Item = mtrec_data::Result<Dataset>>,
    domains: Option<&[String]>,
    eval: EvalConfig,
) -> Result<(Evaluation, usize)> {
    let mut ev = Evaluator::with_config(model, domains, eval);
    for batch in batches {
        ev.add(&batch?.to_batch(model.device())?)?;
    }
    let rows = ev.rows();
    Ok((ev.finish()?, rows))
}

/// The first `limit` rows of `batches` (the last batch cut short); the
/// underlying reader is dropped, so the rest of the file is not read.
fn first_rows(
    batches: impl Iterator<Item = mtrec_data::Result<Dataset>>,
    limit: usize,
) -> impl Iterator<Item = mtrec_data::Result<Dataset>> {
    let mut left = limit;
    batches.map_while(move |batch| {
        if left == 0 {
            return None;
        }
        Some(batch.map(|d| {
            if d.rows() <= left {
                left -= d.rows();
                d
            } else {
                let keep: Vec<usize> = (0..left).collect();
                left = 0;
                d.subset(&keep)
            }
        }))
    })
}

/// The graph `cfg`'s architecture expands to, as a runnable config: the same
/// `[data]`, `[train]` and tasks, and `[model] arch = "graph"` with one
/// `[[model.nodes]]` per node. Parsed back, it expands to the same graph
/// (node ids, hence parameter names, included), so with the same seed it
/// trains to the same weights and metrics.
pub fn graph_config_text(cfg: &LoadedConfig) -> Result<String> {
    let prepared = prepare(cfg, None)?;
    let (graph, _) = expand(cfg, &prepared)?;
    let mut c = cfg.config.clone();
    // The template's side features are no longer implied by `arch`: write
    // them out so that the graph reads the same input.
    c.features.side = prepared.features.side.clone();
    let mut params = toml::Table::new();
    params.insert(
        "nodes".into(),
        toml::Value::try_from(&graph.nodes).map_err(|e| encode("the graph")(&e))?,
    );
    c.model = crate::config::ModelSection {
        arch: GRAPH_ARCH.into(),
        params,
    };
    let text = toml::to_string(&c).map_err(|e| encode("the graph config")(&e))?;
    let note = if independent::applies(cfg, &prepared) {
        "# Note: `single-task` trains one model per task (`[[tasks]]` restricted to it), each with its own\n\
         # input layer and best epoch; this one graph over every task shares the input layer and one best\n\
         # epoch, so it is not the single-task baseline.\n"
    } else {
        ""
    };
    Ok(format!(
        "# The graph of `{}`, runnable with `mtrec run --config FILE`.\n{note}{text}",
        cfg.config.model.arch
    ))
}
