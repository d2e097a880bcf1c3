//! `mlp-tower`: a task head, hidden layers then a final linear map to `[B, 1]`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::dense::{Activation, Linear, Stack};
use crate::component::{Component, Port, Role, Tower};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo};
use crate::inputs::ForwardCtx;
use crate::params::ParamBuilder;
use crate::protocol::{check_units, Kind};

/// `mlp-tower` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpTowerParams {
    /// Hidden layer widths; may be empty (a linear head).
    pub units: Vec<usize>,
    pub activation: Activation,
}

struct MlpTower {
    hidden: Stack,
    out: Linear,
}

impl Tower for MlpTower {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        self.out.forward(&self.hidden.forward(x)?)
    }
}

pub struct MlpTowerKind;

impl Kind for MlpTowerKind {
    type Params = MlpTowerParams;
    fn name(&self) -> &'static str {
        "mlp-tower"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "task head: hidden units = [..] (may be empty) then a linear map to one output"
    }
    fn check(&self, p: &MlpTowerParams, _io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        check_units(&p.units, true)?;
        Ok(Port::Dense { width: 1 })
    }
    fn build(&self, p: &MlpTowerParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d_in = io.inputs[0].width();
        let hidden = Stack::new(&pb.pp("hidden"), d_in, &p.units, p.activation)?;
        let last = p.units.last().copied().unwrap_or(d_in);
        let out = Linear::new(&pb.pp("out"), last, 1, true)?;
        Ok(Component::Tower(Box::new(MlpTower { hidden, out })))
    }
}

crate::register_kind!(MlpTowerKind);
