//! `mlp-tower`: a task head, hidden layers then a final linear map to `[B, 1]`.

use candle_core::Tensor;
use serde::Deserialize;

use super::dense::{check_units, Activation, Linear, Stack};
use crate::component::{Component, Port, Role, Tower};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo, NodeSpec};
use crate::inputs::ForwardCtx;
use crate::params::ParamBuilder;
use crate::registry::{ComponentKind, ComponentRegistration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Hidden layer widths; may be empty (a linear head).
    #[serde(default)]
    units: Vec<usize>,
    #[serde(default)]
    activation: Activation,
}

struct MlpTower {
    d_in: usize,
    hidden: Stack,
    out: Linear,
}

impl Tower for MlpTower {
    fn in_width(&self) -> usize {
        self.d_in
    }
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        self.out.forward(&self.hidden.forward(x)?)
    }
}

pub struct MlpTowerKind;

impl ComponentKind for MlpTowerKind {
    fn name(&self) -> &'static str {
        "mlp-tower"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "task head: hidden units = [..] (may be empty) then a linear map to one output"
    }
    fn check(&self, node: &NodeSpec, _io: &NodeIo, _env: &GraphEnv) -> Result<Port> {
        let p: Params = node.parse_params()?;
        check_units(node, &p.units, true)?;
        Ok(Port::Dense { width: 1 })
    }
    fn build(&self, node: &NodeSpec, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let p: Params = node.parse_params()?;
        let d_in = io.inputs[0].width();
        let hidden = Stack::new(&pb.pp("hidden"), d_in, &p.units, p.activation)?;
        let last = p.units.last().copied().unwrap_or(d_in);
        let out = Linear::new(&pb.pp("out"), last, 1, true)?;
        Ok(Component::Tower(Box::new(MlpTower { d_in, hidden, out })))
    }
}

inventory::submit!(ComponentRegistration(&MlpTowerKind));
