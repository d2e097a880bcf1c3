//! `arch = "graph"`: the graph written in the config itself (config-only
//! model assembly). `mtrec graph <arch>` prints any template in this form.

use crate::error::Result;
use crate::graph::{GraphEnv, GraphSpec};
use crate::protocol::Template;

pub struct GraphArch;

impl Template for GraphArch {
    const NAME: &'static str = "graph";
    const SUMMARY: &'static str = "a graph written in the config: [[model.nodes]] of any registered component kind";
    /// `nodes = [...]`: the `[[model.nodes]]` tables.
    type Params = GraphSpec;
    fn expand(&self, params: &GraphSpec, _env: &GraphEnv) -> Result<GraphSpec> {
        Ok(params.clone())
    }
}

crate::register_template!(GraphArch);
