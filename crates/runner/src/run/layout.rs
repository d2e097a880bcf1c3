//! The run folder's files (names, how each is written and read back), the
//! way back from a folder to a trained model, and what to say when one of
//! its files is damaged.

use std::path::{Path, PathBuf};

use candle_core::Device;
use mtrec_core::{GraphSpec, Model};
use mtrec_data::Preprocessor;
use mtrec_train::EpochLog;

use crate::config::{self, LoadedConfig, RunConfig};
use crate::error::{encode, io, Result, RunError};
use crate::folder::{self, FolderLock};

pub const CONFIG_FILE: &str = "config.toml";

pub const GRAPH_FILE: &str = "graph.toml";

pub const PREPROCESS_FILE: &str = "preprocess.json";

pub const WEIGHTS_FILE: &str = "model.safetensors";

pub const REPORT_FILE: &str = "report.json";

pub const CHECKPOINT_DIR: &str = "checkpoint";

pub const HISTORY_FILE: &str = "history.jsonl";

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mtrec_core::atomic::write_bytes(path, bytes)?)
}

/// Locks the run folder `dir` for this run and removes what killed saves
/// left there; a fresh run (not `resume`) also needs a folder without a
/// finished epoch.
pub(crate) fn open_run_folder(dir: &Path, resume: bool) -> Result<FolderLock> {
    let lock = FolderLock::acquire(dir)?;
    if !resume && has_checkpoint(dir) {
        return Err(RunError::RunFolder {
            dir: dir.to_path_buf(),
            problem: format!(
                "already holds a run; choose another --out (an interrupted run continues with `--resume {}`)",
                dir.display()
            ),
        });
    }
    folder::remove_stale_temporaries(dir)?;
    // A killed run's last checkpoint files (see `folder`).
    folder::unify_permissions(dir)?;
    Ok(lock)
}

/// Whether run folder `dir` holds a finished epoch: its checkpoint, or for
/// a single-task run of independent models that of one of its tasks.
pub fn has_checkpoint(dir: &Path) -> bool {
    let own = |d: &Path| d.join(CHECKPOINT_DIR).join("state.json").exists();
    own(dir)
        || std::fs::read_dir(dir.join(super::TASKS_DIR)).is_ok_and(|entries| entries.flatten().any(|e| own(&e.path())))
}

/// What is wrong with `path` as a safetensors file, if anything.
fn safetensors_problem(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        Err(e) => Some(format!("cannot be read: {e}")),
        Ok(bytes) => candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .err()
            .map(|e| format!("not a complete safetensors file: {e}")),
    }
}

/// The path named by a failed load of weights or checkpoint state.
fn failed_file(e: &mtrec_train::TrainError) -> Option<&Path> {
    use mtrec_train::TrainError as T;
    match e {
        T::Checkpoint { path, .. } | T::Core(mtrec_core::Error::Checkpoint { path, .. }) => Some(path),
        _ => None,
    }
}

/// A resumed run's failure: a damaged checkpoint file named as such, with
/// what to do; other errors as they are.
pub(crate) fn resume_error(dir: &Path, e: mtrec_train::TrainError) -> RunError {
    let damaged = failed_file(&e).and_then(|p| safetensors_problem(p).map(|problem| (p.to_path_buf(), problem)));
    match damaged {
        Some((path, problem)) => RunError::DamagedFile {
            path,
            problem,
            fix: format!(
                "this checkpoint cannot be resumed (earlier epochs' files are not kept): start the run again \
                 with another --out, or remove {} and start it there",
                dir.display()
            ),
        },
        None => e.into(),
    }
}

pub(crate) fn append_history(f: &mut std::fs::File, path: &Path, log: &EpochLog) -> Result<()> {
    use std::io::Write as _;
    let mut line = serde_json::to_string(log).map_err(|e| encode("the history")(&e))?;
    line.push('\n');
    f.write_all(line.as_bytes()).map_err(io(path))?;
    f.flush().map_err(io(path))?;
    Ok(())
}

/// A fresh run folder under `runs/`: `<arch>-<UTC timestamp>`.
pub fn default_run_dir(arch: &str) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let base = PathBuf::from("runs").join(format!("{arch}-{stamp}"));
    // Two runs in the same second get distinct folders.
    let mut dir = base.clone();
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{}-{n}", base.display()));
    }
    dir
}

/// The config a run folder was trained with.
pub fn load_run_config(dir: &Path) -> Result<LoadedConfig> {
    let file = dir.join(CONFIG_FILE);
    if !file.exists() {
        return Err(RunError::RunFolder {
            dir: dir.to_path_buf(),
            problem: format!("not a run folder: it has no {CONFIG_FILE}"),
        });
    }
    config::load(&file, &[])
}

/// A trained model loaded back from its run folder, with the mapping of its
/// inputs: what `predict` and `eval` use.
pub struct Trained {
    /// The model; for the single-task baseline one one-task model per
    /// task, in task order, whose outputs are the run's columns.
    pub models: Vec<Model>,
    /// Every task's preprocessing (for single-task, that of the whole run).
    pub preprocessor: Preprocessor,
    pub config: RunConfig,
}

impl Trained {
    /// Every model's tasks, in column order.
    pub fn tasks(&self) -> Vec<mtrec_core::TaskInfo> {
        self.models.iter().flat_map(|m| m.tasks().iter().cloned()).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.models.iter().map(|m| m.params().parameter_count()).sum()
    }

    /// Per task (column order), one output per row of `data` (logits for
    /// binary tasks): each model's columns in turn.
    pub fn outputs(&self, data: &mtrec_data::Dataset) -> Result<Vec<Vec<f32>>> {
        let mut columns = Vec::new();
        for model in &self.models {
            columns.extend(mtrec_train::batch_outputs(model, &data.to_batch(model.device())?)?);
        }
        Ok(columns)
    }
}

/// Loads `dir`'s graph, preprocessing and best weights. Only models trained
/// on tabular data can read new files (generated data has no file format).
pub fn load_trained(dir: &Path) -> Result<Trained> {
    let cfg = load_run_config(dir)?;
    if super::independent::is_independent(dir) {
        let preprocessor = load_preprocessor(dir)?;
        let mut models = Vec::new();
        for task_dir in super::independent::task_dirs(dir, &preprocessor) {
            if !task_dir.join(CONFIG_FILE).exists() {
                return Err(RunError::RunFolder {
                    dir: dir.to_path_buf(),
                    problem: format!(
                        "has no model for task `{}` ({} is missing): the run did not finish (continue it with --resume)",
                        task_dir.file_name().unwrap_or_default().to_string_lossy(),
                        task_dir.display()
                    ),
                });
            }
            models.extend(load_trained(&task_dir)?.models);
        }
        return Ok(Trained {
            models,
            preprocessor,
            config: cfg.config,
        });
    }
    let preprocessor = load_preprocessor(dir)?;
    let graph_path = dir.join(GRAPH_FILE);
    let text = std::fs::read_to_string(&graph_path).map_err(io(&graph_path))?;
    let graph = GraphSpec::from_toml(&text)?;
    let domains = preprocessor.domain.as_ref().map_or(0, |d| d.names.len());
    let features = crate::source::model_features(&cfg, preprocessor.features(), domains)?;
    let model = Model::build(
        &graph,
        &features,
        &preprocessor.task_infos(),
        domains,
        cfg.config.train.seed,
        &Device::Cpu,
    )?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.exists() {
        return Err(RunError::RunFolder {
            dir: dir.to_path_buf(),
            problem: format!("has no {WEIGHTS_FILE}: the run did not finish (continue it with --resume)"),
        });
    }
    model
        .params()
        .load(&weights)
        .map_err(|e| match safetensors_problem(&weights) {
            Some(problem) => RunError::DamagedFile {
                fix: restore_hint(dir, &weights),
                path: weights.clone(),
                problem,
            },
            None => e.into(),
        })?;
    Ok(Trained {
        models: vec![model],
        preprocessor,
        config: cfg.config,
    })
}

/// A run folder's fitted preprocessing; none for generated data.
fn load_preprocessor(dir: &Path) -> Result<Preprocessor> {
    let pre_path = dir.join(PREPROCESS_FILE);
    if !pre_path.exists() {
        return Err(RunError::RunFolder {
            dir: dir.to_path_buf(),
            problem: format!(
                "has no {PREPROCESS_FILE}: it was trained on generated data, which has no file format to predict on"
            ),
        });
    }
    Ok(Preprocessor::load(&pre_path)?)
}

/// What to do about a damaged `model.safetensors`: the run's last checkpoint
/// holds the same best-epoch weights (`epoch-NNNN.best.safetensors`) when it
/// is intact; else train again.
fn restore_hint(dir: &Path, weights: &Path) -> String {
    let best = std::fs::read_dir(dir.join(CHECKPOINT_DIR)).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".best.safetensors"))
            .max()
    });
    match best.filter(|b| safetensors_problem(b).is_none()) {
        Some(b) => format!(
            "the run's checkpoint holds the same best-epoch weights: copy them over it \
             (`cp {} {}`), or train the model again",
            b.display(),
            weights.display()
        ),
        None => format!(
            "train the model again (`mtrec run --config {} --out NEW_DIR`)",
            dir.join(CONFIG_FILE).display()
        ),
    }
}
