//! `mlp`: a dense stack `[B, in] -> [B, units.last]`, the shared bottom of
//! Shared-Bottom and the per-task network of the single-task baseline.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::dense::{Activation, Stack};
use crate::component::{Component, Layer, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo};
use crate::inputs::ForwardCtx;
use crate::params::ParamBuilder;
use crate::protocol::{check_units, Kind};

/// `mlp` parameters; `units` must be written (the default `[16]` only
/// shows the syntax).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpParams {
    /// Layer widths, e.g. `[64, 32]`.
    pub units: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            units: vec![16],
            activation: Activation::Relu,
        }
    }
}

struct Mlp {
    stack: Stack,
}

impl Layer for Mlp {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        self.stack.forward(x)
    }
}

pub struct MlpKind;

impl Kind for MlpKind {
    type Params = MlpParams;
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "dense layers with an activation after each: units = [..], activation = relu|sigmoid|tanh|linear"
    }
    fn check(&self, p: &MlpParams, _io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        check_units(&p.units, false)?;
        Ok(Port::Dense {
            width: *p.units.last().unwrap_or(&0),
        })
    }
    fn build(&self, p: &MlpParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let stack = Stack::new(pb, io.inputs[0].width(), &p.units, p.activation)?;
        Ok(Component::Layer(Box::new(Mlp { stack })))
    }
}

crate::register_kind!(MlpKind);
