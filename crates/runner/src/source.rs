//! `[data]` sources: from a config section to a dataset and its split.
//!
//! Generated sources (`mmoe-synthetic`, `multi-domain-synthetic`) need no
//! file and define their own tasks; with a logging bias
//! (`multi-domain-synthetic`'s `exposure_bias`) the test rows carry the
//! unbiased labels, training and validation the logged ones. Tabular sources (`csv`, `parquet`) read
//! files described by a `TabularSchema`, with tasks from `[[tasks]]`; paths
//! are relative to `--data-dir`, else `[data] data_dir` (itself relative to
//! the config file's folder), else `MTREC_DATA_DIR`, else the config file's
//! folder ([`data_dir`]).

use std::path::{Path, PathBuf};

use mtrec_core::protocol::{parse_value, to_table};
use mtrec_core::{DomainEmbedding, FeatureSpec, TaskInfo};
use mtrec_data::preprocess::{Fitting, Progress};
use mtrec_data::schema::FileFormat;
use mtrec_data::{
    load_split_sharded, split, Dataset, FitCounts, MergeCounts, MmoeSynthetic, MultiDomainSynthetic, Preprocessor,
    ShardRead, Split, StreamOptions, StreamedData, Stripe, TabularSchema,
};
use mtrec_train::TrainParts;
use serde::de::DeserializeOwned;

use crate::config::{key_path, LoadedConfig};
use crate::error::{io, Result};

/// The names of the built-in sources, for error messages.
pub const SOURCES: &[&str] = &["csv", "mmoe-synthetic", "multi-domain-synthetic", "parquet"];

/// The environment variable naming the folder real data sets live in.
pub const DATA_DIR_ENV: &str = "MTREC_DATA_DIR";

/// Default of `[data] train_eval_rows` (streaming).
pub const DEFAULT_TRAIN_EVAL_ROWS: usize = 100_000;

/// Where a prepared data set's rows are.
#[derive(Debug)]
// One value per run: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Rows {
    /// Loaded (or generated) whole, with a seeded split of its rows.
    Memory { data: Dataset, split: Split },
    /// Files re-read on every pass (`[data] streaming = true`).
    Streamed(StreamedData),
}

/// A data set with its split and the model input it implies.
#[derive(Debug)]
pub struct Prepared {
    pub rows: Rows,
    pub tasks: Vec<TaskInfo>,
    /// Names of the data's domains, if it has a domain column.
    pub domains: Option<Vec<String>>,
    pub features: FeatureSpec,
    /// The source section with every default written out.
    pub resolved: toml::Table,
    /// Whether `seed` in the section regenerates the data (synthetic sources).
    pub generated: bool,
    /// The mapping fitted on the training rows (tabular sources), saved with
    /// the model so that prediction on new files uses the same ids and scaling.
    pub preprocessor: Option<Preprocessor>,
    /// Tabular sources: the absolute folder relative paths were read from
    /// (written to a run folder's config as `[data] data_dir`).
    pub base: Option<PathBuf>,
    /// `[data] shards`: the training rows' parts (1: no parts).
    pub shards: usize,
    /// Rows in memory in parts: which rows of each part this process holds
    /// (all, or with `shards` = ranks only its own).
    pub parts: Option<TrainParts>,
}

impl Prepared {
    /// Number of domains (0 without a domain column).
    pub fn domain_count(&self) -> usize {
        self.domains.as_ref().map_or(0, Vec::len)
    }

    /// Whether this process holds only its own part of the training rows
    /// (a rank of a run with `shards` = ranks reading tabular files), so
    /// that metrics over the training rows gather every rank's.
    pub fn holds_own_part_only(&self) -> bool {
        let streamed_own = matches!(&self.rows, Rows::Streamed(d) if d.train_stripe.count() > 1);
        let memory_own = self
            .parts
            .as_ref()
            .is_some_and(|p| p.rows.iter().zip(&p.sizes).any(|(r, &n)| r.len() != n));
        streamed_own || memory_own
    }
}

/// `[data] shards`, checked against the run's ranks and batch size.
fn shards(cfg: &LoadedConfig) -> Result<usize> {
    let Some(k) = cfg.config.data.shards else {
        return Ok(1);
    };
    let ranks = mtrec_distributed::current().size();
    if k == 0 {
        return Err(cfg.error(
            "data",
            Some("shards"),
            "must be at least 1: the parts the training rows are read in (1: one order of all rows)",
        ));
    }
    if ranks > 1 && k != 1 && k != ranks {
        return Err(cfg.error(
            "data",
            Some("shards"),
            format!(
                "is {k} but the run has {ranks} ranks: give shards = {ranks} (each rank reads its own part of the \
                 training rows) or 1 (every rank reads all rows)"
            ),
        ));
    }
    let batch = cfg.config.train.batch_size;
    if ranks == 1 && !batch.is_multiple_of(k) {
        return Err(cfg.error(
            "train",
            Some("batch_size"),
            format!(
                "{batch} cannot be divided among [data] shards = {k}: in one process each shard gives batch_size / \
                 shards rows to every batch; give a multiple of {k}"
            ),
        ));
    }
    Ok(k)
}

/// A rank's fit counts added to every rank's, in rank order (so every rank
/// forms the same preprocessing).
fn merge_over_ranks(own: FitCounts) -> mtrec_data::Result<FitCounts> {
    let c = mtrec_distributed::current();
    let all = c
        .all_gather(&own.to_bytes()?)
        .map_err(|e| mtrec_data::DataError::Exchange(e.to_string()))?;
    let mut parts = all.iter().map(|b| FitCounts::from_bytes(b));
    let mut sum = parts
        .next()
        .ok_or_else(|| mtrec_data::DataError::Exchange("no rank sent its counts".into()))??;
    for p in parts {
        sum.merge(p?)?;
    }
    Ok(sum)
}

/// The `[data]` streaming settings, checked: `None` when not streaming.
/// Errors name the key and the fix.
pub fn stream_options(cfg: &LoadedConfig) -> Result<Option<StreamOptions>> {
    let d = &cfg.config.data;
    if !d.streaming {
        for (key, set) in [
            ("chunk_rows", d.chunk_rows.is_some()),
            ("shuffle_buffer", d.shuffle_buffer.is_some()),
            ("train_eval_rows", d.train_eval_rows.is_some()),
        ] {
            if set {
                return Err(cfg.error(
                    "data",
                    Some(key),
                    format!("`{key}` applies only to streamed data: add `streaming = true` or remove `{key}`"),
                ));
            }
        }
        return Ok(None);
    }
    if !matches!(d.source.as_str(), "csv" | "parquet") {
        return Err(cfg.error(
            "data",
            Some("streaming"),
            format!(
                "source `{}` is generated in memory and cannot stream; streaming is for `csv` and `parquet` \
                 files: remove `streaming`",
                d.source
            ),
        ));
    }
    let defaults = StreamOptions::default();
    let options = StreamOptions {
        chunk_rows: d.chunk_rows.unwrap_or(defaults.chunk_rows),
        shuffle_buffer: d.shuffle_buffer.unwrap_or(defaults.shuffle_buffer),
    };
    if options.chunk_rows == 0 {
        return Err(cfg.error(
            "data",
            Some("chunk_rows"),
            "must be at least 1: the rows read from a file at a time (default 65536)",
        ));
    }
    if options.shuffle_buffer == 0 {
        return Err(cfg.error(
            "data",
            Some("shuffle_buffer"),
            "must be at least 1: the rows shuffled together (default 262144; 1 trains in file order)",
        ));
    }
    if d.train_eval_rows == Some(0) {
        return Err(cfg.error(
            "data",
            Some("train_eval_rows"),
            format!("must be at least 1: the training rows the report's train metrics cover (default {DEFAULT_TRAIN_EVAL_ROWS})"),
        ));
    }
    Ok(Some(options))
}

/// The source's own keys of `[data]`, parsed into its typed form; a
/// generator's defaults give the examples of each key's syntax.
fn section<T: DeserializeOwned>(cfg: &LoadedConfig, examples: Option<toml::Table>) -> Result<T> {
    let mut table = cfg.config.data.params.clone();
    table.remove("source");
    parse_value(toml::Value::Table(table), examples.as_ref()).map_err(|e| cfg.param_error(&key_path(&["data"]), &e))
}

/// The folder relative data paths start from, made absolute (against the
/// working directory): `--data-dir`, else `[data] data_dir` (relative to the
/// config file's folder), else `MTREC_DATA_DIR`, else the config file's
/// folder. The config's own key comes before the environment so that a run
/// folder's config, which records the folder its run read from, resolves
/// its paths as that run did.
pub fn data_dir(cfg: &LoadedConfig) -> Result<PathBuf> {
    let config_folder = cfg
        .file()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = match (&cfg.data_dir, &cfg.config.data.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => config_folder.join(d),
        (None, None) => std::env::var_os(DATA_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| config_folder.to_path_buf()),
    };
    std::path::absolute(&dir).map_err(io(&dir))
}

/// Reads or generates the data described by `[data]`. `progress` sees the
/// reading of tabular files.
pub fn prepare(cfg: &LoadedConfig, progress: Option<&mut dyn FnMut(&Progress<'_>)>) -> Result<Prepared> {
    prepare_fitted(cfg, progress, Fitting::Fresh)
}

/// [`prepare`] with a tabular source's preprocessing obtained as `fitting`
/// says (a trained run's, kept or grown: warm start; a resumed run's own).
pub fn prepare_fitted(
    cfg: &LoadedConfig,
    progress: Option<&mut dyn FnMut(&Progress<'_>)>,
    fitting: Fitting<'_>,
) -> Result<Prepared> {
    let d = &cfg.config.data;
    let streaming = stream_options(cfg)?;
    let shards = shards(cfg)?;
    let collective = mtrec_distributed::current();
    // With `shards` = ranks, each rank reads only its own part.
    let own_part = (shards > 1 && collective.size() > 1)
        .then(|| Stripe::new(collective.rank(), collective.size()))
        .transpose()
        .map_err(|e| cfg.error("data", Some("shards"), e))?;
    let merge: MergeCounts<'_> = &merge_over_ranks;
    let shard_read = own_part.map(|stripe| ShardRead { stripe, merge });
    // `unbiased`: labels without the generator's logging bias, which the test
    // rows get (training and validation keep the logged ones).
    let generated = |data: Dataset, unbiased: Option<Vec<f32>>, table: toml::Table, seed: u64| -> Result<Prepared> {
        if d.data_dir.is_some() {
            return Err(cfg.error(
                "data",
                Some("data_dir"),
                format!(
                    "source `{}` is generated and reads no file; remove `data_dir`",
                    d.source
                ),
            ));
        }
        if !cfg.config.tasks.is_empty() {
            return Err(cfg.error(
                "tasks",
                None,
                format!("source `{}` defines its own tasks; remove [[tasks]]", d.source),
            ));
        }
        if d.weight.is_some() {
            return Err(cfg.error(
                "data",
                Some("weight"),
                format!(
                    "source `{}` is generated and has no weight column; weights are for `csv` and `parquet` files",
                    d.source
                ),
            ));
        }
        let data = match &d.group {
            Some(field) => data
                .with_groups_from_field(field)
                .map_err(|e| cfg.error("data", Some("group"), e))?,
            None => data,
        };
        let split = split(data.rows(), d.split, d.split_seed.unwrap_or(seed))
            .map_err(|e| cfg.error("data", Some("split"), e))?;
        let data = mtrec_data::Logged { data, unbiased }
            .with_unbiased_rows(&split.test)
            .map_err(|e| cfg.error("data", None, e))?;
        let domains = data.domains.as_ref().map_or(0, |d| d.names.len());
        let features = model_features(cfg, features_of(&data), domains)?;
        // Generated on every rank whole: each rank trains on its part.
        let parts = (shards > 1).then(|| TrainParts::striped(&split.train, shards));
        Ok(Prepared {
            tasks: data.tasks.clone(),
            domains: data.domains.as_ref().map(|d| d.names.clone()),
            rows: Rows::Memory { data, split },
            features,
            resolved: table,
            generated: true,
            preprocessor: None,
            base: None,
            shards,
            parts,
        })
    };
    match d.source.as_str() {
        "mmoe-synthetic" => {
            let gen: MmoeSynthetic = section(cfg, Some(to_table(&MmoeSynthetic::default())))?;
            let data = gen.generate().map_err(|e| cfg.error("data", None, e))?;
            generated(data, None, to_table(&gen), gen.seed)
        }
        "multi-domain-synthetic" => {
            let gen: MultiDomainSynthetic = section(cfg, Some(to_table(&MultiDomainSynthetic::default())))?;
            let logged = gen.generate_logged().map_err(|e| cfg.error("data", None, e))?;
            generated(logged.data, logged.unbiased, to_table(&gen), gen.seed)
        }
        "csv" | "parquet" => {
            let mut schema: TabularSchema = section(cfg, None)?;
            schema.group = d.group.clone();
            schema.weight = d.weight.clone();
            schema.source = Some(if d.source == "csv" {
                FileFormat::Csv
            } else {
                FileFormat::Parquet
            });
            if cfg.config.tasks.is_empty() {
                return Err(cfg.error(
                    "tasks",
                    None,
                    "a tabular source needs at least one [[tasks]] table (name, kind, label)",
                ));
            }
            let base = data_dir(cfg)?;
            let seed = d.split_seed.unwrap_or(cfg.config.train.seed);
            // Where relative paths led, for a file that cannot be opened.
            let hint = |e: &mtrec_data::DataError| {
                if !matches!(e, mtrec_data::DataError::Io { .. }) {
                    return String::new();
                }
                let from = if cfg.data_dir.is_some() {
                    "--data-dir"
                } else if d.data_dir.is_some() {
                    "[data] data_dir"
                } else if std::env::var_os(DATA_DIR_ENV).is_some() {
                    DATA_DIR_ENV
                } else {
                    "the config's folder"
                };
                // The environment is read after the config's key.
                let env = if d.data_dir.is_none() {
                    format!(" or {DATA_DIR_ENV}")
                } else {
                    String::new()
                };
                format!(
                    " (relative paths start at {}, from {from}; point elsewhere with --data-dir DIR{env})",
                    base.display()
                )
            };
            let mut resolved = cfg.config.data.params.clone();
            // Keep the schema as written (paths relative): it must run again
            // from another data folder.
            resolved.remove("source");
            let (rows, preprocessor, parts) = match streaming {
                Some(options) => {
                    let streamed = StreamedData::open_sharded(
                        &schema,
                        &cfg.config.tasks,
                        Some(base.as_path()),
                        d.split,
                        seed,
                        options,
                        fitting,
                        shard_read,
                        progress,
                    )
                    .map_err(|e| cfg.error("data", None, format!("{e}{}", hint(&e))))?;
                    let pre = Preprocessor::clone(&streamed.preprocessor);
                    (Rows::Streamed(streamed), pre, None)
                }
                None => {
                    let loaded = load_split_sharded(
                        &schema,
                        &cfg.config.tasks,
                        Some(base.as_path()),
                        d.split,
                        seed,
                        fitting,
                        shard_read,
                        progress,
                    )
                    .map_err(|e| cfg.error("data", None, format!("{e}{}", hint(&e))))?;
                    let parts = match (&loaded.train_parts, own_part) {
                        (Some(sizes), Some(stripe)) => {
                            Some(TrainParts::own(stripe.part(), &loaded.split.train, sizes.clone()))
                        }
                        _ => (shards > 1).then(|| TrainParts::striped(&loaded.split.train, shards)),
                    };
                    let rows = Rows::Memory {
                        data: loaded.data,
                        split: loaded.split,
                    };
                    (rows, loaded.preprocessor, parts)
                }
            };
            let domains = preprocessor.domain.as_ref().map_or(0, |d| d.names.len());
            Ok(Prepared {
                features: model_features(cfg, preprocessor.features(), domains)?,
                tasks: preprocessor.task_infos(),
                domains: preprocessor.domain.as_ref().map(|d| d.names.clone()),
                rows,
                resolved,
                generated: false,
                preprocessor: Some(preprocessor),
                base: Some(base),
                shards,
                parts,
            })
        }
        other => Err(cfg.error(
            "data",
            Some("source"),
            format!("unknown source `{other}`; known: {}", SOURCES.join(", ")),
        )),
    }
}

/// The model input of generated data: every sparse field embedded in 4
/// dimensions (as the public PyTorch peers do), then the dense columns.
pub fn features_of(data: &Dataset) -> FeatureSpec {
    data.features(4)
}

/// The model input of `cfg` on data whose columns give `base`: `[features]`
/// (the domain embedding) and the architecture's side features (kept out of
/// the input, see `Architecture::side_features`). The run and a model loaded
/// back from its run folder both take their input from here.
pub fn model_features(cfg: &LoadedConfig, mut base: FeatureSpec, domains: usize) -> Result<FeatureSpec> {
    let f = &cfg.config.features;
    if f.domain_as_feature {
        if domains == 0 {
            return Err(cfg.error(
                "features",
                Some("domain_as_feature"),
                "the data has no domain column to embed; remove `domain_as_feature` or use data with domains \
                 (e.g. source = \"multi-domain-synthetic\", or a tabular `domain` column)",
            ));
        }
        if f.domain_dim == 0 {
            return Err(cfg.error(
                "features",
                Some("domain_dim"),
                "must be at least 1 (e.g. domain_dim = 4)",
            ));
        }
        base.domain = Some(DomainEmbedding {
            count: domains,
            dim: f.domain_dim,
        });
    }
    let m = &cfg.config.model;
    let arch = mtrec_core::registry::architecture(&m.arch).map_err(|e| cfg.error("model", Some("arch"), e))?;
    base.side = arch
        .side_features_parsed(&cfg.arch_params)
        .map_err(|e| cfg.model_error(e))?;
    for name in &f.side {
        let known =
            base.sparse_field(name).is_some() || base.dense.iter().any(|d| d == name) || base.sequence(name).is_some();
        if !known {
            return Err(cfg.error(
                "features",
                Some("side"),
                format!("`{name}` is no sparse, dense or sequence feature of the data; remove it from `side`"),
            ));
        }
        if !base.side.contains(name) {
            base.side.push(name.clone());
        }
    }
    Ok(base)
}
