//! The run config: `[data]`, `[model]`, `[train]`, parsed strictly (an unknown
//! key is an error naming its line), with `--set key=value` overrides, and
//! resolved (every default written out) for the run folder.

use std::path::{Path, PathBuf};

use mtrec_core::registry;
use mtrec_data::TaskSpec;
use mtrec_train::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, RunError};

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
    /// Tasks of tabular sources (`[[tasks]]`); generated sources define theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
}

/// A config and the file it came from (for error messages).
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: RunConfig,
    pub file: PathBuf,
    /// The original text, to locate keys named in later errors.
    pub text: String,
    /// `--data-dir`: where relative data paths start (before `MTREC_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
}

impl LoadedConfig {
    /// A config error about `[section] key`, with the key's line when the
    /// file has it.
    pub fn error(&self, section: &str, key: Option<&str>, message: impl std::fmt::Display) -> RunError {
        let place = match key.and_then(|k| locate_key(&self.text, section, k)) {
            Some(line) => format!("line {line}, [{section}] {}", key.unwrap_or_default()),
            None => match key {
                Some(k) => format!("[{section}] {k}"),
                None => format!("[{section}]"),
            },
        };
        RunError::Config {
            file: self.file.clone(),
            message: format!("{place}: {message}"),
        }
    }
}

/// The 1-based line of `key = ...` inside `[section]`, if written there.
pub fn locate_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if current == section {
            let k = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            if k == key {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The 1-based lines of the array-of-tables headers `[[a.b]]` with the
/// dotted name `path` (e.g. `["model", "nodes"]`) in a config text, in order.
pub fn array_table_lines(text: &str, path: &[&str]) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            t.strip_prefix("[[")
                .and_then(|r| r.split("]]").next())
                .is_some_and(|h| h.split('.').map(str::trim).eq(path.iter().copied()))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The 1-based line of `key = ...` between line `from` (a table's header)
/// and the next table header.
pub fn key_line_in_table(text: &str, from: usize, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| l.split('=').next().is_some_and(|k| k.trim().trim_matches('"') == key))
        .map(|(i, _)| i + 1)
}

/// Checks every `[[tasks]]` name where it is written (a name with a space
/// or a non-ASCII letter would otherwise fail later, through the node id
/// `tower-<name>` the user never wrote): the error names the file, the
/// line of `name` (or of the `[[tasks]]` header) and the rule.
fn check_task_names(cfg: &LoadedConfig) -> Result<()> {
    let tasks = &cfg.config.tasks;
    let headers = array_table_lines(&cfg.text, &["tasks"]);
    for (i, t) in tasks.iter().enumerate() {
        let Err(e) = t.check_name() else { continue };
        // Lines only when the file's tables are the tasks (not replaced by --set).
        let header = (headers.len() == tasks.len()).then(|| headers[i]);
        let place = match header {
            Some(h) => match key_line_in_table(&cfg.text, h, "name") {
                Some(l) => format!("line {l}, [[tasks]] #{} `name`", i + 1),
                None => format!("line {h}, [[tasks]] #{}", i + 1),
            },
            None => format!("[[tasks]] #{} `name`", i + 1),
        };
        return Err(RunError::Config {
            file: cfg.file.clone(),
            message: format!("{place}: {e}"),
        });
    }
    Ok(())
}

/// The first unknown key named in a serde message (`unknown field `x``).
pub fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    rest.split('`').next()
}

/// Applies `key.path=value` overrides; the value is read as TOML (number,
/// bool, array, quoted string) or else taken as a plain string.
pub fn apply_overrides(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for set in sets {
        let (path, raw) = set
            .split_once('=')
            .ok_or_else(|| RunError::Usage(format!("--set `{set}`: expected KEY=VALUE, e.g. --set train.epochs=5")))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let keys: Vec<&str> = path.trim().split('.').collect();
        let mut cur = &mut *table;
        for k in &keys[..keys.len() - 1] {
            let entry = cur
                .entry(k.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .ok_or_else(|| RunError::Usage(format!("--set `{set}`: `{k}` is not a table")))?;
        }
        cur.insert(keys[keys.len() - 1].to_string(), value);
    }
    Ok(())
}

/// Reads a config file, applies overrides, parses strictly.
pub fn load(file: &Path, sets: &[String]) -> Result<LoadedConfig> {
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    parse(&text, file, sets)
}

pub fn parse(text: &str, file: &Path, sets: &[String]) -> Result<LoadedConfig> {
    let cfg_err = |message: String| RunError::Config {
        file: file.to_path_buf(),
        message,
    };
    // Parse the text first so that syntax and type errors carry line and column.
    let direct: std::result::Result<RunConfig, toml::de::Error> = toml::from_str(text);
    let config = if sets.is_empty() {
        direct.map_err(|e| cfg_err(e.to_string().trim_end().to_string()))?
    } else {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| cfg_err(e.to_string().trim_end().to_string()))?;
        apply_overrides(&mut table, sets)?;
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| cfg_err(format!("after --set: {}", e.message())))?
    };
    let loaded = LoadedConfig {
        config,
        file: file.to_path_buf(),
        text: text.to_string(),
        data_dir: None,
    };
    check_task_names(&loaded)?;
    // The architecture must exist (its parameters are checked at expansion).
    registry::architecture(&loaded.config.model.arch).map_err(|e| loaded.error("model", Some("arch"), e))?;
    Ok(loaded)
}

/// The default config of an architecture: the paper's synthetic data, the
/// template's defaults, default training.
pub fn default_for(arch: &str) -> Result<LoadedConfig> {
    let text = format!("[data]\nsource = \"mmoe-synthetic\"\n\n[model]\narch = \"{arch}\"\n");
    parse(&text, Path::new("<built-in default config>"), &[])
}
