//! `softmax-gate`: `softmax(x W)` over the experts of the banks it mixes.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::dense::Linear;
use crate::component::{Component, Gate, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo};
use crate::inputs::ForwardCtx;
use crate::ops::{self, Activation};
use crate::params::ParamBuilder;
use crate::protocol::Kind;

/// `softmax-gate` parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoftmaxGateParams {
    /// MMoE and PLE gates are bias-free linear maps; a bias is allowed.
    pub bias: bool,
}

/// The MMoE / CGC / PLE gate. Uses the differentiable `softmax` (candle's
/// `softmax_last_dim` has no backward and would silently freeze the gate).
pub struct SoftmaxGate {
    linear: Linear,
}

impl SoftmaxGate {
    pub fn new(pb: &ParamBuilder, d_sel: usize, n: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(pb, d_sel, n, bias)?,
        })
    }
}

impl Gate for SoftmaxGate {
    fn weights(&self, selector: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        // One fused op: matmul, bias, row softmax (with its backward).
        self.linear.forward_act(selector, Activation::Softmax)
    }
}

pub struct SoftmaxGateKind;

impl Kind for SoftmaxGateKind {
    type Params = SoftmaxGateParams;
    fn name(&self) -> &'static str {
        "softmax-gate"
    }
    fn role(&self) -> Role {
        Role::Gate
    }
    fn summary(&self) -> &'static str {
        "gate softmax(x W) over its `experts` banks, mixing their outputs (bias = false by default)"
    }
    fn check(&self, _p: &SoftmaxGateParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        Ok(Port::Dense {
            width: io.experts.first().map_or(0, |p| p.width()),
        })
    }
    fn build(&self, p: &SoftmaxGateParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let gate = SoftmaxGate::new(pb, io.inputs[0].width(), io.expert_count(), p.bias)?;
        Ok(Component::Gate(Box::new(gate)))
    }
}

crate::register_kind!(SoftmaxGateKind);

/// Mixes a bank `[n, B, d]` with gate weights `[B, n]` into `[B, d]`:
/// `out[b] = sum_i w[b, i] * bank[i, b]`.
pub fn mix(weights: &Tensor, bank: &Tensor) -> Result<Tensor> {
    ops::mix(weights, std::slice::from_ref(bank))
}
