//! `[data]` sources: from a config section to a dataset and its split.

use mtrec_core::{FeatureSpec, SparseFeature};
use mtrec_data::{split, Dataset, MmoeSynthetic, Split};

use crate::config::{unknown_field, LoadedConfig};
use crate::error::Result;

/// The names of the built-in sources, for error messages.
pub const SOURCES: &[&str] = &["mmoe-synthetic"];

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

/// The model input a data set implies: its sparse fields (embedding dims from
/// the data's schema) then its dense columns.
pub fn features_of(data: &Dataset) -> FeatureSpec {
    FeatureSpec {
        sparse: data
            .sparse
            .as_ref()
            .map(|s| {
                s.fields
                    .iter()
                    .zip(&s.vocab)
                    .map(|(name, &vocab)| SparseFeature {
                        name: name.clone(),
                        vocab,
                        dim: 4,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        dense: data.dense.as_ref().map(|d| d.names.clone()).unwrap_or_default(),
    }
}
