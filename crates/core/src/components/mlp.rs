//! `mlp`: a dense stack `[B, in] -> [B, units.last]`, the shared bottom of
//! Shared-Bottom and the per-task network of the single-task baseline.

use candle_core::Tensor;
use serde::Deserialize;

use super::dense::{check_units, Activation, Stack};
use crate::component::{Component, Layer, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo, NodeSpec};
use crate::inputs::ForwardCtx;
use crate::params::ParamBuilder;
use crate::registry::{ComponentKind, ComponentRegistration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    units: Vec<usize>,
    #[serde(default)]
    activation: Activation,
}

struct Mlp {
    d_in: usize,
    stack: Stack,
}

impl Layer for Mlp {
    fn in_width(&self) -> usize {
        self.d_in
    }
    fn out_width(&self) -> usize {
        self.stack.layers.last().map_or(self.d_in, |l| l.weight.dims()[1])
    }
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        self.stack.forward(x)
    }
}

pub struct MlpKind;

impl ComponentKind for MlpKind {
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "dense layers with an activation after each: units = [..], activation = relu|sigmoid|tanh|linear"
    }
    fn check(&self, node: &NodeSpec, _io: &NodeIo, _env: &GraphEnv) -> Result<Port> {
        let p: Params = node.parse_params()?;
        check_units(node, &p.units, false)?;
        Ok(Port::Dense {
            width: *p.units.last().unwrap_or(&0),
        })
    }
    fn build(&self, node: &NodeSpec, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let p: Params = node.parse_params()?;
        let d_in = io.inputs[0].width();
        Ok(Component::Layer(Box::new(Mlp {
            d_in,
            stack: Stack::new(pb, d_in, &p.units, p.activation)?,
        })))
    }
}

inventory::submit!(ComponentRegistration(&MlpKind));
