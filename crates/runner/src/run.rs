//! One run: data, model, training, evaluation, report, run folder.

use std::path::{Path, PathBuf};

use candle_core::Device;
use mtrec_core::{registry, GraphEnv, GraphSpec, Model};
use mtrec_train::{evaluate, train, EpochLog, Report, SplitRows};

use crate::config::{unknown_field, LoadedConfig, RunConfig};
use crate::error::{io, Result, RunError};
use crate::source::{prepare, Prepared};

/// What a finished run hands back.
#[derive(Debug)]
pub struct RunResult {
    pub report: Report,
    pub resolved: RunConfig,
    pub graph: GraphSpec,
    /// The trained weights (those of the best validation epoch).
    pub params: mtrec_core::ParamStore,
}

/// Expands the config's architecture into a graph for the given data.
pub fn expand(cfg: &LoadedConfig, prepared: &Prepared) -> Result<(GraphSpec, toml::Table)> {
    let m = &cfg.config.model;
    let arch = registry::architecture(&m.arch).map_err(|e| cfg.error("model", Some("arch"), e))?;
    let env = GraphEnv {
        input_width: prepared.features.width(),
        tasks: prepared.data.tasks.clone(),
        domains: prepared.data.domains.as_ref().map_or(0, |d| d.names.len()),
    };
    let graph = arch.expand(&m.params, &env).map_err(|e| match &e {
        mtrec_core::Error::Params { message, .. } => cfg.error("model", unknown_field(message), &e),
        _ => cfg.error("model", None, &e),
    })?;
    // The parameters as run: defaults, then what the config set.
    let mut params = arch.defaults();
    for (k, v) in &m.params {
        params.insert(k.clone(), v.clone());
    }
    Ok((graph, params))
}

/// Trains and evaluates one config. `on_epoch` sees every epoch's log.
pub fn run(cfg: &LoadedConfig, on_epoch: impl FnMut(&EpochLog)) -> Result<RunResult> {
    let prepared = prepare(cfg)?;
    let (graph, model_params) = expand(cfg, &prepared)?;
    let device = Device::Cpu;
    let t = &cfg.config.train;
    let model = Model::build(
        &graph,
        &prepared.features,
        &prepared.data.tasks,
        prepared.data.domains.as_ref().map_or(0, |d| d.names.len()),
        t.seed,
        &device,
    )
    .map_err(|e| cfg.error("model", None, e))?;
    let names: Vec<String> = prepared.data.tasks.iter().map(|t| t.name.clone()).collect();
    t.validate(&names).map_err(|e| cfg.error("train", None, e))?;
    let outcome = train(&model, &prepared.data, &prepared.split, t, on_epoch)?;
    let eval = |rows: &[usize]| evaluate(&model, &prepared.data, rows, t.eval_batch_size);
    let report = Report {
        arch: cfg.config.model.arch.clone(),
        parameters: model.params().parameter_count(),
        tasks: prepared.data.tasks.clone(),
        rows: SplitRows {
            train: prepared.split.train.len(),
            valid: prepared.split.valid.len(),
            test: prepared.split.test.len(),
        },
        train: eval(&prepared.split.train)?,
        valid: eval(&prepared.split.valid)?,
        test: eval(&prepared.split.test)?,
        outcome,
    };
    let mut resolved = cfg.config.clone();
    resolved.data.params = prepared.resolved.clone();
    resolved.model.params = model_params;
    Ok(RunResult {
        report,
        resolved,
        graph,
        params: model.params().clone(),
    })
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

/// Writes the resolved config, the graph, the weights and `report.json`,
/// each atomically.
pub fn write_run_folder(dir: &Path, result: &RunResult) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = toml::to_string(&result.resolved)
        .map_err(|e| RunError::Usage(format!("cannot write the resolved config: {e}")))?;
    mtrec_core::atomic::write_bytes(&dir.join("config.toml"), config.as_bytes())?;
    mtrec_core::atomic::write_bytes(&dir.join("graph.toml"), result.graph.to_toml()?.as_bytes())?;
    let json = serde_json::to_string_pretty(&result.report)
        .map_err(|e| RunError::Usage(format!("cannot write the report: {e}")))?;
    mtrec_core::atomic::write_bytes(&dir.join("report.json"), json.as_bytes())?;
    result.params.save(&dir.join("model.safetensors"))?;
    Ok(())
}
