//! Architecture templates: a name, a typed `Params`, and the graph those
//! parameters expand into.
//!
//! A plugin writes a [`Template`] (typed, nothing else to repeat) and
//! registers it with [`crate::register_template!`]; the registry, the runner
//! and `mtrec graph` see it through the object-safe [`Architecture`], which
//! [`Registered`] implements for every template once.

use std::any::Any;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::parse::{parse_params, to_table};
use super::Registered;
use crate::error::{Error, Result};
use crate::graph::{GraphEnv, GraphSpec, NodeSpec};
use crate::task::TaskInfo;

/// What an architecture plugin writes.
pub trait Template: Sync + 'static {
    /// The name used in configs and on the command line (`mmoe`, `ple`...).
    const NAME: &'static str;
    /// One line for `mtrec list`.
    const SUMMARY: &'static str;
    /// The `[model]` table without `arch`. `Default` is the template's
    /// defaults (`mtrec graph` prints them; `{}` parses to them), so mark it
    /// `#[serde(default, deny_unknown_fields)]`.
    type Params: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// The graph these parameters give on this data.
    fn expand(&self, params: &Self::Params, env: &GraphEnv) -> Result<GraphSpec>;

    /// Features (by name) that this template's components read themselves
    /// (through `ForwardCtx::features`) and that must stay out of the shared
    /// model input, e.g. SAR-Net's debias features, which must never reach
    /// the serving path. The runner marks them `FeatureSpec::side`.
    fn side_features(&self, _params: &Self::Params) -> Vec<String> {
        Vec::new()
    }
}

/// A template's parameters, parsed once (by [`Architecture::parse`]).
#[derive(Clone)]
pub struct ArchParams {
    arch: &'static str,
    value: std::sync::Arc<dyn Any + Send + Sync>,
    table: toml::Table,
}

impl ArchParams {
    /// The parameters with every default written out (the resolved config).
    pub fn table(&self) -> &toml::Table {
        &self.table
    }
    /// The architecture these parameters are for.
    pub fn arch(&self) -> &'static str {
        self.arch
    }
    fn get<T: 'static>(&self, arch: &'static str) -> Result<&T> {
        self.value.downcast_ref().ok_or_else(|| {
            Error::GraphWide(format!(
                "internal: parameters of `{}` handed to architecture `{arch}`",
                self.arch
            ))
        })
    }
}

impl std::fmt::Debug for ArchParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchParams({} {:?})", self.arch, self.table)
    }
}

/// An architecture as the registry and the runner see it (object-safe).
pub trait Architecture: Sync {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// The template's parameters with their defaults.
    fn defaults(&self) -> toml::Table;
    /// Parses `[model]` (without `arch`) once; errors carry the key path.
    fn parse(&self, params: &toml::Table) -> Result<ArchParams>;
    fn expand_parsed(&self, params: &ArchParams, env: &GraphEnv) -> Result<GraphSpec>;
    fn side_features_parsed(&self, params: &ArchParams) -> Result<Vec<String>>;

    /// Parse and expand in one go (tests, tools).
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec> {
        self.expand_parsed(&self.parse(params)?, env)
    }
    /// Parse and list the side features in one go.
    fn side_features(&self, params: &toml::Table) -> Result<Vec<String>> {
        self.side_features_parsed(&self.parse(params)?)
    }
}

impl<T: Template> Architecture for Registered<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn summary(&self) -> &'static str {
        T::SUMMARY
    }
    fn defaults(&self) -> toml::Table {
        to_table(&T::Params::default())
    }
    fn parse(&self, params: &toml::Table) -> Result<ArchParams> {
        let value: T::Params = parse_params(params).map_err(|error| Error::Params {
            owner: format!("architecture `{}` ([model])", T::NAME),
            error: Box::new(error),
        })?;
        Ok(ArchParams {
            arch: T::NAME,
            table: to_table(&value),
            value: std::sync::Arc::new(value),
        })
    }
    fn expand_parsed(&self, params: &ArchParams, env: &GraphEnv) -> Result<GraphSpec> {
        self.0.expand(params.get::<T::Params>(T::NAME)?, env)
    }
    fn side_features_parsed(&self, params: &ArchParams) -> Result<Vec<String>> {
        Ok(self.0.side_features(params.get::<T::Params>(T::NAME)?))
    }
}

/// Registers a [`Template`] value: `mtrec_core::register_template!(Mmoe);`
#[macro_export]
macro_rules! register_template {
    ($template:expr) => {
        $crate::inventory::submit!($crate::ArchRegistration(&$crate::protocol::Registered($template)));
    };
}

/// The node id of task `task`'s tower in the built-in templates.
pub fn tower_id(task: &str) -> String {
    format!("tower-{task}")
}

/// One `mlp-tower` per task, task `k` reading `input_of(k)`.
pub fn towers(tasks: &[TaskInfo], units: &[usize], mut input_of: impl FnMut(&TaskInfo) -> String) -> Vec<NodeSpec> {
    use crate::components::tower::{MlpTowerKind, MlpTowerParams};
    tasks
        .iter()
        .map(|t| {
            let p = MlpTowerParams {
                units: units.to_vec(),
                ..Default::default()
            };
            NodeSpec::of(tower_id(&t.name), &MlpTowerKind, &p)
                .input(input_of(t))
                .task(&t.name)
        })
        .collect()
}
