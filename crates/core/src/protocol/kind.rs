//! Component kinds: a name, a role, a typed `Params`, a check of those
//! parameters against the node's inputs (no weight yet), and the build.
//!
//! A plugin writes a [`Kind`] and registers it with
//! [`crate::register_kind!`]. Graph validation parses each node's
//! parameters once ([`ComponentKind::parse`]) and keeps them in the
//! `CheckedGraph`; `check` and `build` receive the typed value.

use std::any::Any;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::parse::{parse_params, ParamError};
use super::Registered;
use crate::component::{Component, Port, Role};
use crate::error::{Error, Result};
use crate::graph::{GraphEnv, NodeIo};
use crate::params::ParamBuilder;

/// What a component plugin writes.
pub trait Kind: Sync + 'static {
    /// The node's parameters (`count`, `units`...). `deny_unknown_fields`,
    /// so that a misspelt key is an error; `Default` supplies the examples
    /// of each key's syntax in error messages.
    type Params: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// The name configs write as `kind = "..."`.
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    /// One line for `mtrec list`.
    fn summary(&self) -> &'static str;
    /// The output port these parameters give on these inputs, or what is
    /// wrong with them (the validator adds the node's id and origin).
    fn check(&self, params: &Self::Params, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String>;
    /// Builds the component, creating its weights under `pb` (already
    /// prefixed with the node id). Runs only on checked parameters.
    fn build(&self, params: &Self::Params, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component>;
    /// True for a kind whose node is there for a term it adds to the
    /// training objective ([`crate::ForwardCtx::add_penalty`]), such as a
    /// constraint between several towers' outputs: its node may feed no
    /// tower (validation rejects any other node that feeds none), and the
    /// nodes it reads count as used. Being downstream of the towers, it
    /// changes no task's structure ([`crate::Model::shared_vars`]).
    fn objective_term(&self) -> bool {
        false
    }
}

/// A node's parameters, parsed once by graph validation.
#[derive(Clone)]
pub struct NodeParams(Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for NodeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeParams(..)")
    }
}

/// A component kind as the registry and the graph runtime see it.
pub trait ComponentKind: Sync {
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    fn summary(&self) -> &'static str;
    fn parse(&self, params: &toml::Table) -> std::result::Result<NodeParams, ParamError>;
    fn check(&self, params: &NodeParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String>;
    fn build(&self, params: &NodeParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component>;
    /// [`Kind::objective_term`].
    fn objective_term(&self) -> bool;
}

impl<K: Kind> Registered<K> {
    fn typed<'a>(&self, params: &'a NodeParams) -> Result<&'a K::Params> {
        params.0.downcast_ref().ok_or_else(|| {
            Error::GraphWide(format!(
                "internal: parameters of another kind handed to `{}`",
                self.0.name()
            ))
        })
    }
}

impl<K: Kind> ComponentKind for Registered<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn role(&self) -> Role {
        self.0.role()
    }
    fn summary(&self) -> &'static str {
        self.0.summary()
    }
    fn parse(&self, params: &toml::Table) -> std::result::Result<NodeParams, ParamError> {
        let p: K::Params = parse_params(params)?;
        Ok(NodeParams(Arc::new(p)))
    }
    fn check(&self, params: &NodeParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        let p = self.typed(params).map_err(|e| e.to_string())?;
        self.0.check(p, io, env)
    }
    fn build(&self, params: &NodeParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        self.0.build(self.typed(params)?, io, env, pb)
    }
    fn objective_term(&self) -> bool {
        self.0.objective_term()
    }
}

/// Registers a [`Kind`] value: `mtrec_core::register_kind!(MlpExpertsKind);`
#[macro_export]
macro_rules! register_kind {
    ($kind:expr) => {
        $crate::inventory::submit!($crate::ComponentRegistration(&$crate::protocol::Registered(
            $kind
        )));
    };
}

/// Validates a `units` list: no zero, and non-empty unless `allow_empty`.
pub fn check_units(units: &[usize], allow_empty: bool) -> std::result::Result<(), String> {
    if units.is_empty() && !allow_empty {
        return Err("`units` must list at least one layer width, e.g. units = [16]".into());
    }
    if units.contains(&0) {
        return Err(format!("`units` = {units:?} has a zero width"));
    }
    Ok(())
}
