//! The inventory registries: architecture templates and component kinds.
//!
//! A crate registers with `inventory::submit!`; lookups build a sorted map
//! once. rustc drops a linked crate that no code references, and its
//! registrations with it: a binary must reference every plugin it wants (each
//! built-in plugin exposes `pub fn link() {}` for that).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::component::{Component, Port, Role};
use crate::error::{Error, Result};
use crate::graph::{GraphEnv, GraphSpec, NodeIo, NodeSpec};
use crate::params::ParamBuilder;

/// A named template that expands its few parameters into a graph.
pub trait Architecture: Sync {
    /// The name used in configs and on the command line (`mmoe`, `ple`...).
    fn name(&self) -> &'static str;
    /// One line for `mtrec list`.
    fn summary(&self) -> &'static str;
    /// The template's parameters with their defaults, as TOML (`mtrec graph`
    /// and the docs print it). Parsing `{}` must give the same.
    fn defaults(&self) -> toml::Table;
    /// Expands `params` (the `[model]` table without `arch`) into a graph.
    /// Unknown parameters are errors.
    fn expand(&self, params: &toml::Table, env: &GraphEnv) -> Result<GraphSpec>;
    /// Features (by name) that this template's components read themselves
    /// (through `ForwardCtx::features`) and that must stay out of the shared
    /// model input, e.g. SAR-Net's debias features, which must never reach the
    /// serving path. The runner marks them `FeatureSpec::side` before
    /// expanding. Default: none.
    fn side_features(&self, _params: &toml::Table) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A kind of graph node (e.g. `mlp-experts`, `softmax-gate`, `concat`).
pub trait ComponentKind: Sync {
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    fn summary(&self) -> &'static str;
    /// Validates the node's parameters against its inputs and returns its
    /// output port, without creating any weight.
    fn check(&self, node: &NodeSpec, io: &NodeIo, env: &GraphEnv) -> Result<Port>;
    /// Builds the component, creating its weights under `pb` (already
    /// prefixed with the node id).
    fn build(&self, node: &NodeSpec, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component>;
}

/// Registers an architecture: `inventory::submit!(ArchRegistration(&MyArch));`
pub struct ArchRegistration(pub &'static dyn Architecture);
/// Registers a component kind: `inventory::submit!(ComponentRegistration(&MyKind));`
pub struct ComponentRegistration(pub &'static dyn ComponentKind);

inventory::collect!(ArchRegistration);
inventory::collect!(ComponentRegistration);

/// Builds a sorted name index; a name registered twice is an error.
pub fn index<T: Copy>(
    what: &'static str,
    items: impl IntoIterator<Item = (&'static str, T)>,
) -> Result<BTreeMap<&'static str, T>> {
    let mut map = BTreeMap::new();
    for (name, item) in items {
        if map.insert(name, item).is_some() {
            return Err(Error::DuplicateName {
                what,
                name: name.to_string(),
            });
        }
    }
    Ok(map)
}

type ArchIndex = BTreeMap<&'static str, &'static dyn Architecture>;
type KindIndex = BTreeMap<&'static str, &'static dyn ComponentKind>;

fn cached<T: Clone>(
    cell: &'static OnceLock<std::result::Result<T, (String, &'static str)>>,
    make: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let r = cell.get_or_init(|| {
        make().map_err(|e| match e {
            Error::DuplicateName { what, name } => (name, what),
            other => (other.to_string(), "registration"),
        })
    });
    r.clone().map_err(|(name, what)| Error::DuplicateName { what, name })
}

/// Every linked architecture, by name.
pub fn architectures() -> Result<ArchIndex> {
    static CELL: OnceLock<std::result::Result<ArchIndex, (String, &'static str)>> = OnceLock::new();
    cached(&CELL, || {
        index(
            "architecture",
            inventory::iter::<ArchRegistration>
                .into_iter()
                .map(|r| (r.0.name(), r.0)),
        )
    })
}

/// Every linked component kind, by name.
pub fn components() -> Result<KindIndex> {
    static CELL: OnceLock<std::result::Result<KindIndex, (String, &'static str)>> = OnceLock::new();
    cached(&CELL, || {
        index(
            "component kind",
            inventory::iter::<ComponentRegistration>
                .into_iter()
                .map(|r| (r.0.name(), r.0)),
        )
    })
}

pub fn architecture(name: &str) -> Result<&'static dyn Architecture> {
    let all = architectures()?;
    all.get(name).copied().ok_or_else(|| Error::UnknownName {
        what: "architecture",
        name: name.to_string(),
        known: all.keys().map(|k| k.to_string()).collect(),
    })
}

pub fn component(name: &str) -> Result<&'static dyn ComponentKind> {
    let all = components()?;
    all.get(name).copied().ok_or_else(|| Error::UnknownName {
        what: "component kind",
        name: name.to_string(),
        known: all.keys().map(|k| k.to_string()).collect(),
    })
}

/// Parses a template's parameter table into its own struct, with the
/// template's name in the error.
pub fn parse_arch_params<T: serde::de::DeserializeOwned>(arch: &str, params: &toml::Table) -> Result<T> {
    toml::Value::Table(params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| Error::Params {
            what: format!("architecture `{arch}` ([model])"),
            message: e.message().to_string(),
        })
}

/// Serialises a template's parameter struct back into a table (for defaults).
pub fn to_table<T: serde::Serialize>(value: &T) -> toml::Table {
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_sorted_and_rejects_duplicates() {
        let m = index("thing", [("b", 1), ("a", 2)]).unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        let err = index("thing", [("a", 1), ("a", 2)]).unwrap_err().to_string();
        assert!(err.contains("thing `a` is registered twice"), "{err}");
    }

    #[test]
    fn unknown_component_lists_known_ones() {
        let err = component("no-such-kind")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown component kind `no-such-kind`"), "{err}");
        assert!(err.contains("mlp-experts") && err.contains("softmax-gate"), "{err}");
    }
}
