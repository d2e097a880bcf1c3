//! `[data]` sources: from a config section to a dataset and its split.

use mtrec_core::FeatureSpec;
use mtrec_data::{split, Dataset, MmoeSynthetic, MultiDomainSynthetic, Split};

use crate::config::{unknown_field, LoadedConfig};
use crate::error::Result;

/// The names of the built-in sources, for error messages.
pub const SOURCES: &[&str] = &["mmoe-synthetic", "multi-domain-synthetic"];

/// A loaded data set with its split and the model input it implies.
#[derive(Debug)]
pub struct Prepared {
    pub data: Dataset,
    pub split: Split,
    pub features: FeatureSpec,
    /// The source section with every default written out.
    pub resolved: toml::Table,
    /// Whether `seed` in the section regenerates the data (synthetic sources).
    pub generated: bool,
}

/// Reads or generates the data described by `[data]`.
pub fn prepare(cfg: &LoadedConfig) -> Result<Prepared> {
    let d = &cfg.config.data;
    let (data, resolved, seed, generated) = match d.source.as_str() {
        "mmoe-synthetic" => {
            let gen: MmoeSynthetic = toml::Value::Table(d.params.clone())
                .try_into()
                .map_err(|e: toml::de::Error| cfg.error("data", unknown_field(e.message()), e.message()))?;
            let data = gen.generate().map_err(|e| cfg.error("data", None, e))?;
            let table = mtrec_core::registry::to_table(&gen);
            (data, table, gen.seed, true)
        }
        "multi-domain-synthetic" => {
            let gen: MultiDomainSynthetic = toml::Value::Table(d.params.clone())
                .try_into()
                .map_err(|e: toml::de::Error| cfg.error("data", unknown_field(e.message()), e.message()))?;
            let data = gen.generate().map_err(|e| cfg.error("data", None, e))?;
            let table = mtrec_core::registry::to_table(&gen);
            (data, table, gen.seed, true)
        }
        other => {
            return Err(cfg.error(
                "data",
                Some("source"),
                format!("unknown source `{other}`; known: {}", SOURCES.join(", ")),
            ))
        }
    };
    let split =
        split(data.rows(), d.split, d.split_seed.unwrap_or(seed)).map_err(|e| cfg.error("data", Some("split"), e))?;
    let features = features_of(&data);
    Ok(Prepared {
        data,
        split,
        features,
        resolved,
        generated,
    })
}

/// The model input of generated data: every sparse field embedded in 4
/// dimensions (as the public PyTorch peers do), then the dense columns.
pub fn features_of(data: &Dataset) -> FeatureSpec {
    data.features(4)
}
