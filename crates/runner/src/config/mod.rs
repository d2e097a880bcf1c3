//! The run config: `[data]`, `[model]`, `[features]`, `[train]`, `[eval]`,
//! `[[tasks]]`, read once: the text is parsed with every key's position
//! ([`spans`]), `--set key=value` overrides applied, then every section
//! parsed into its typed form, the architecture's parameters included
//! ([`LoadedConfig::arch_params`]). Every error, from this parse or from a
//! later check, names the file, the line and the key ([`LoadedConfig::error_at`]),
//! or the `--set` that gave the value, and for a value of the wrong type an
//! example of the syntax the key expects.

pub mod spans;

use std::path::{Path, PathBuf};

use mtrec_core::protocol::{inline, parse_value, to_table, ArchParams, KeyPath, KeySegment, ParamError};
use mtrec_core::registry;
use mtrec_data::TaskSpec;
use mtrec_train::{EvalConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, RunError};
use spans::Spans;

fn default_split() -> [f64; 3] {
    [0.8, 0.1, 0.1]
}

/// `[data]`: where rows come from. `source` picks the reader or generator;
/// the other keys are the source's own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataSection {
    pub source: String,
    /// Train / valid / test fractions of a seeded split.
    #[serde(default = "default_split")]
    pub split: [f64; 3],
    /// Seed of the split; by default the source's `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// Tabular sources: re-read the files chunk by chunk on every pass
    /// instead of loading them (`mtrec_data::stream`), for files larger
    /// than memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// Streaming: rows encoded at a time (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_rows: Option<usize>,
    /// Streaming: rows of the training shuffle buffer (default 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_buffer: Option<usize>,
    /// Streaming: the report's train-part metrics cover the first this many
    /// training rows (default 100000; exact metrics keep 8 bytes per row
    /// and task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_eval_rows: Option<usize>,
    /// Tabular sources: the folder relative file paths start from, itself
    /// relative to the config file's folder. Precedence: `--data-dir`, then
    /// this key, then `MTREC_DATA_DIR`, then the config file's folder. A run
    /// folder's `config.toml` holds the absolute folder its run read from,
    /// so that `--resume` (and a new run from that config) reads the same
    /// files wherever it is started and whatever `MTREC_DATA_DIR` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The column naming each row's group (usually the user): binary tasks
    /// then also report GAUC (`mtrec_train::metrics::gauc`). For generated
    /// data, a sparse field (e.g. `user_id` of `multi-domain-synthetic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Tabular sources: a numeric column weighing each row's loss in every
    /// task (`mtrec_core::loss::weighted_task_loss`), and every metric too
    /// with `[eval] weighted = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// The training rows in this many parts, each shuffled on its own,
    /// global batch b made of every part's b-th batch (training row i in
    /// part i mod shards). Under `mpirun -np N`, `shards = N` has each rank
    /// read, encode and hold only its own part (the default, 1, has every
    /// rank read all rows in the one-process order); in one process it
    /// replays such a run's order. See README "Training on several machines".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    #[serde(flatten)]
    pub params: toml::Table,
}

/// `[model]`: an architecture template and its parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelSection {
    pub arch: String,
    #[serde(flatten)]
    pub params: toml::Table,
}

fn default_domain_dim() -> usize {
    4
}

/// `[features]`: how the data's columns enter the model, beyond what the
/// source describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    /// Embed each row's domain id (`domain_dim` wide) into the model input, so
    /// that models without domain-specific parameters (Shared-Bottom, MMoE,
    /// PLE...) can tell domains apart: the fair baseline for multi-domain
    /// models. Needs data with domains.
    #[serde(default)]
    pub domain_as_feature: bool,
    #[serde(default = "default_domain_dim")]
    pub domain_dim: usize,
    /// Features kept out of the model input, read only by components that
    /// ask for them by name (`ForwardCtx::features`); added to the
    /// architecture's own (`Architecture::side_features`). `mtrec graph`
    /// writes a template's here so that its graph config has the same input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side: Vec<String>,
}

impl Default for FeaturesSection {
    fn default() -> Self {
        Self {
            domain_as_feature: false,
            domain_dim: default_domain_dim(),
            side: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataSection,
    pub model: ModelSection,
    #[serde(default)]
    pub features: FeaturesSection,
    #[serde(default)]
    pub train: TrainConfig,
    /// How the metrics are computed (`weighted`): validation (early
    /// stopping), the report, `mtrec eval` of the run folder.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Tasks of tabular sources (`[[tasks]]`); generated sources define theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
}

/// One `--set KEY=VALUE`: the key path it sets and the text as given.
#[derive(Clone, Debug)]
pub struct Override {
    pub path: KeyPath,
    pub text: String,
}

/// Where a config's values came from: the file with each key's position,
/// and the `--set` overrides applied over it. Turns any problem with a
/// value into an error naming its place.
#[derive(Clone, Debug)]
pub struct Places {
    pub file: PathBuf,
    /// Where each key of the file was written.
    pub spans: Spans,
    /// The `--set` overrides applied over the file.
    pub sets: Vec<Override>,
}

/// A config read once: the typed sections, the architecture's parsed
/// parameters, and where each value came from (for every later error).
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: RunConfig,
    /// `[model]` without `arch`, parsed by the architecture.
    pub arch_params: ArchParams,
    pub places: Places,
    /// `--data-dir`: where relative data paths start (before `MTREC_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
}

/// `KeyPath` from dotted names (`["model", "experts"]`).
pub fn key_path(keys: &[&str]) -> KeyPath {
    KeyPath(keys.iter().map(|k| KeySegment::Key(k.to_string())).collect())
}

/// How a key path reads in a message: `[model] expert_units[1]`,
/// `[[tasks]] #2 name`, `[[model.nodes]] #3 units`. The config's arrays of
/// tables (`[[tasks]]`, `[[model.nodes]]`) are named by entry.
pub fn describe(path: &KeyPath) -> String {
    let key = |i: usize| match path.0.get(i) {
        Some(KeySegment::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let index = |i: usize| match path.0.get(i) {
        Some(KeySegment::Index(n)) => Some(*n),
        _ => None,
    };
    let (head, rest_from) = match (key(0), key(1), index(1), index(2)) {
        (Some("tasks"), _, Some(n), _) => (format!("[[tasks]] #{}", n + 1), 2),
        (Some("model"), Some("nodes"), _, Some(n)) => (format!("[[model.nodes]] #{}", n + 1), 3),
        (Some(section), ..) => (format!("[{section}]"), 1),
        (None, ..) => (String::new(), 0),
    };
    let rest = KeyPath(path.0[rest_from.min(path.0.len())..].to_vec());
    match (head.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => head,
        (false, false) => format!("{head} {rest}"),
    }
}

impl Places {
    /// A config error about `[section] key` (`key` None: the section).
    pub fn error(&self, section: &str, key: Option<&str>, message: impl std::fmt::Display) -> RunError {
        let mut path = key_path(&[section]);
        if let Some(k) = key {
            path = path.key(k);
        }
        self.error_at(&path, message)
    }

    /// A config error about the value at `path`: the `--set` that gave it,
    /// or the line and column where the file wrote it (or its nearest
    /// written ancestor).
    pub fn error_at(&self, path: &KeyPath, message: impl std::fmt::Display) -> RunError {
        let what = describe(path);
        let place = match self.override_of(path) {
            Some(set) => format!("--set `{}`: {what}", set.text),
            None => match self.spans.find(path) {
                // A column only where a line holds several keys (inline tables).
                Some((p, _)) if p.column == 1 => format!("line {}, {what}", p.line),
                Some((p, _)) => format!("line {}, column {}, {what}", p.line, p.column),
                None => what,
            },
        };
        RunError::Config {
            file: self.file.clone(),
            message: format!("{place}: {message}"),
        }
    }

    /// A parameter error of the table at `base` (`[model]`, a graph
    /// node...): located, with the example of the expected syntax written
    /// as the place it came from would write it.
    pub fn param_error(&self, base: &KeyPath, e: &ParamError) -> RunError {
        let path = base.join(&e.path);
        let fix = e.example.as_ref().map(|example| match self.override_of(&path) {
            Some(_) => format!(" (write it like `--set {path}={}`)", inline(example)),
            None => format!(
                " (expected like `{}`)",
                e.example_assignment().unwrap_or_else(|| inline(example))
            ),
        });
        self.error_at(&path, format!("{}{}", e.message, fix.unwrap_or_default()))
    }

    /// `[model]`'s parameters parsed by its architecture, errors located.
    pub fn model_params(&self, model: &ModelSection) -> Result<ArchParams> {
        let arch = registry::architecture(&model.arch).map_err(|e| self.error("model", Some("arch"), e))?;
        arch.parse(&model.params).map_err(|e| match e {
            mtrec_core::Error::Params { error, .. } => self.param_error(&key_path(&["model"]), &error),
            e => self.error("model", Some("arch"), e),
        })
    }

    /// The `--set` whose key is `path` or one of its ancestors.
    fn override_of(&self, path: &KeyPath) -> Option<&Override> {
        self.sets
            .iter()
            .rev()
            .find(|s| s.path.0.len() <= path.0.len() && path.0[..s.path.0.len()] == s.path.0[..])
    }
}

impl LoadedConfig {
    /// The config file (its folder is where relative data paths may start).
    pub fn file(&self) -> &Path {
        &self.places.file
    }

    pub fn error(&self, section: &str, key: Option<&str>, message: impl std::fmt::Display) -> RunError {
        self.places.error(section, key, message)
    }
    pub fn error_at(&self, path: &KeyPath, message: impl std::fmt::Display) -> RunError {
        self.places.error_at(path, message)
    }
    pub fn param_error(&self, base: &KeyPath, e: &ParamError) -> RunError {
        self.places.param_error(base, e)
    }

    /// Replaces `[model]` (`--arch`, `compare --models`), parsing its
    /// parameters as [`parse`] does.
    pub fn set_model(&mut self, model: ModelSection) -> Result<()> {
        self.arch_params = self.places.model_params(&model)?;
        self.config.model = model;
        Ok(())
    }

    /// Maps a core error to a located config error: parameter errors name
    /// their key under `[model]` (a node's under its `[[model.nodes]]`
    /// entry), graph errors keep the node's origin, others name `[model]`.
    pub fn model_error(&self, e: mtrec_core::Error) -> RunError {
        match &e {
            mtrec_core::Error::Params { error, .. } => self.param_error(&key_path(&["model"]), error),
            mtrec_core::Error::NodeParams { node, kind, error, .. } => {
                let base = self.node_path(node);
                match base {
                    Some(base) => {
                        let mut located = (**error).clone();
                        located.message = format!("graph node `{node}` (kind `{kind}`): {}", error.message);
                        self.param_error(&base, &located)
                    }
                    None => self.error("model", Some("arch"), e),
                }
            }
            mtrec_core::Error::Graph { .. } => RunError::Config {
                file: self.places.file.clone(),
                message: e.to_string(),
            },
            _ => self.error("model", Some("arch"), e),
        }
    }

    /// `model.nodes[i]` of the node with this id (graph configs).
    pub fn node_path(&self, id: &str) -> Option<KeyPath> {
        let toml::Value::Array(nodes) = self.config.model.params.get("nodes")? else {
            return None;
        };
        let i = nodes
            .iter()
            .position(|n| n.get("id").and_then(toml::Value::as_str) == Some(id))?;
        Some(key_path(&["model", "nodes"]).index(i))
    }

    /// "FILE line L" of `path`, for origins of graph nodes.
    pub fn origin(&self, path: &KeyPath) -> String {
        let p = &self.places;
        match p.spans.get(path) {
            Some(pos) if p.override_of(path).is_none() => format!("{} line {}", p.file.display(), pos.line),
            _ => format!("{}, {}", p.file.display(), describe(path)),
        }
    }
}

/// Applies `key.path=value` overrides; the value is read as TOML (number,
/// bool, array, quoted string) or else taken as a plain string.
pub fn apply_overrides(table: &mut toml::Table, sets: &[String]) -> Result<Vec<Override>> {
    let mut applied = Vec::new();
    for set in sets {
        let usage = |m: String| RunError::Usage(format!("--set `{set}`: {m}"));
        let (path, raw) = set
            .split_once('=')
            .ok_or_else(|| usage("expected KEY=VALUE, e.g. --set train.epochs=5".into()))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let keys: Vec<&str> = path.trim().split('.').map(str::trim).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(usage(
                "the key has an empty part; write it as section.key, e.g. train.lr".into(),
            ));
        }
        let mut cur = &mut *table;
        for k in &keys[..keys.len() - 1] {
            let entry = cur
                .entry(k.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .ok_or_else(|| usage(format!("`{k}` is not a table")))?;
        }
        cur.insert(keys[keys.len() - 1].to_string(), value);
        applied.push(Override {
            path: key_path(&keys),
            text: set.clone(),
        });
    }
    Ok(applied)
}

/// Reads a config file, applies overrides, parses strictly.
pub fn load(file: &Path, sets: &[String]) -> Result<LoadedConfig> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    parse(&text, file, sets)
}

pub fn parse(text: &str, file: &Path, sets: &[String]) -> Result<LoadedConfig> {
    // Syntax errors: toml's own message, with line and column.
    let mut table: toml::Table = toml::from_str(text).map_err(|e| RunError::Config {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let places = Places {
        file: file.to_path_buf(),
        sets: apply_overrides(&mut table, sets)?,
        spans: Spans::of(text),
    };
    // The defaults of the fixed sections show the syntax of a mistyped key.
    let mut examples = toml::Table::new();
    examples.insert("train".into(), toml::Value::Table(to_table(&TrainConfig::default())));
    examples.insert(
        "features".into(),
        toml::Value::Table(to_table(&FeaturesSection::default())),
    );
    examples.insert("eval".into(), toml::Value::Table(to_table(&EvalConfig::default())));
    let config: RunConfig = parse_value(toml::Value::Table(table), Some(&examples))
        .map_err(|e| places.param_error(&KeyPath::default(), &e))?;
    for (i, t) in config.tasks.iter().enumerate() {
        // A name with a space or a non-ASCII letter would otherwise fail
        // later, through the node id `tower-<name>` the user never wrote.
        if let Err(e) = t.check_name() {
            return Err(places.error_at(&key_path(&["tasks"]).index(i).key("name"), e));
        }
    }
    check_eval(&config, &places)?;
    let arch_params = places.model_params(&config.model)?;
    Ok(LoadedConfig {
        config,
        arch_params,
        places,
        data_dir: None,
    })
}

/// Weighted metrics need the rows' weights: `[eval] weighted = true`
/// without `[data] weight` is refused where it was written.
fn check_eval(config: &RunConfig, places: &Places) -> Result<()> {
    if config.eval.weighted && config.data.weight.is_none() {
        return Err(places.error(
            "eval",
            Some("weighted"),
            "weighted = true weighs every metric by the rows' sample weights, but [data] names no weight \
             column: add `weight = \"<column>\"` to [data] (a numeric column of the CSV/Parquet file, finite \
             and >= 0), or remove `weighted = true`",
        ));
    }
    Ok(())
}

/// The `[model]` section of `file` (`compare --models`): a whole config or
/// a file holding only `[model]`, checked as [`parse`] checks it.
pub fn load_model(file: &Path) -> Result<ModelSection> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| RunError::Config {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let places = Places {
        file: file.to_path_buf(),
        sets: Vec::new(),
        spans: Spans::of(&text),
    };
    let model = table
        .remove("model")
        .ok_or_else(|| places.error("model", None, "missing: a model file needs a [model] table with `arch`"))?;
    let model: ModelSection = parse_value(model, None).map_err(|e| places.param_error(&key_path(&["model"]), &e))?;
    places.model_params(&model)?;
    Ok(model)
}

/// The default config of an architecture: the paper's synthetic data, the
/// template's defaults, default training.
pub fn default_for(arch: &str) -> Result<LoadedConfig> {
    parse(&default_text(arch), Path::new("<built-in default config>"), &[])
}

/// The text of [`default_for`].
pub fn default_text(arch: &str) -> String {
    format!("[data]\nsource = \"mmoe-synthetic\"\n\n[model]\narch = \"{arch}\"\n")
}
