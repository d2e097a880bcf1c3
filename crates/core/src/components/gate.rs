//! `softmax-gate`: `softmax(x W)` over the experts of the banks it mixes.

use candle_core::Tensor;
use serde::Deserialize;

use super::dense::Linear;
use crate::component::{Component, Gate, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo, NodeSpec};
use crate::inputs::ForwardCtx;
use crate::ops::{self, Act};
use crate::params::ParamBuilder;
use crate::registry::{ComponentKind, ComponentRegistration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// MMoE and PLE gates are bias-free linear maps; a bias is allowed.
    #[serde(default)]
    bias: bool,
}

/// The MMoE / CGC / PLE gate. Uses the differentiable `softmax` (candle's
/// `softmax_last_dim` has no backward and would silently freeze the gate).
pub struct SoftmaxGate {
    d_sel: usize,
    n: usize,
    linear: Linear,
}

impl SoftmaxGate {
    pub fn new(pb: &ParamBuilder, d_sel: usize, n: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            d_sel,
            n,
            linear: Linear::new(pb, d_sel, n, bias)?,
        })
    }
}

impl Gate for SoftmaxGate {
    fn selector_width(&self) -> usize {
        self.d_sel
    }
    fn experts(&self) -> usize {
        self.n
    }
    fn weights(&self, selector: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        // One fused op: matmul, bias, row softmax (with its backward).
        self.linear.forward_act(selector, Act::Softmax)
    }
}

pub struct SoftmaxGateKind;

impl ComponentKind for SoftmaxGateKind {
    fn name(&self) -> &'static str {
        "softmax-gate"
    }
    fn role(&self) -> Role {
        Role::Gate
    }
    fn summary(&self) -> &'static str {
        "gate softmax(x W) over its `experts` banks, mixing their outputs (bias = false by default)"
    }
    fn check(&self, node: &NodeSpec, io: &NodeIo, _env: &GraphEnv) -> Result<Port> {
        let _: Params = node.parse_params()?;
        Ok(Port::Dense {
            width: io.experts.first().map_or(0, |p| p.width()),
        })
    }
    fn build(&self, node: &NodeSpec, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let p: Params = node.parse_params()?;
        let n = io.expert_count();
        Ok(Component::Gate(Box::new(SoftmaxGate::new(
            pb,
            io.inputs[0].width(),
            n,
            p.bias,
        )?)))
    }
}

inventory::submit!(ComponentRegistration(&SoftmaxGateKind));

/// Mixes a bank `[n, B, d]` with gate weights `[B, n]` into `[B, d]`:
/// `out[b] = sum_i w[b, i] * bank[i, b]`.
pub fn mix(weights: &Tensor, bank: &Tensor) -> Result<Tensor> {
    ops::mix(weights, std::slice::from_ref(bank))
}
