//! `arch = "graph"`: the graph written in the config itself (config-only
//! model assembly). `mtrec graph <arch>` prints any template in this form.

use serde::Deserialize;

use crate::error::Result;
use crate::graph::{GraphEnv, GraphSpec, NodeSpec};
use crate::registry::{parse_arch_params, ArchRegistration, Architecture};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    nodes: Vec<NodeSpec>,
}

pub struct GraphArch;

impl Architecture for GraphArch {
    fn name(&self) -> &'static str {
        "graph"
    }
    fn summary(&self) -> &'static str {
        "a graph written in the config: [[model.nodes]] of any registered component kind"
    }
    fn defaults(&self) -> toml::Table {
        toml::Table::new()
    }
    fn expand(&self, params: &toml::Table, _env: &GraphEnv) -> Result<GraphSpec> {
        let p: Params = parse_arch_params(self.name(), params)?;
        Ok(GraphSpec { nodes: p.nodes })
    }
}

inventory::submit!(ArchRegistration(&GraphArch));
