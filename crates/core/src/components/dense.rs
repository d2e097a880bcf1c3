//! A fully connected layer and a stack of them: the bricks of every MLP.

use candle_core::Tensor;

use crate::error::Result;
use crate::ops;
/// The one activation enum (`activation = "relu"` in configs), defined
/// with the fused ops that apply it.
pub use crate::ops::Activation;
use crate::params::{Init, ParamBuilder};

/// `y = x W + b` with `W: [in, out]` (stored input-major so that the forward is
/// one matmul without a transpose), PyTorch's `U(+-1/sqrt(in))` init.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(pb: &ParamBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = pb.get("weight", &[d_in, d_out], Init::FanIn(d_in))?;
        let bias = if bias {
            Some(pb.get("bias", &[d_out], Init::FanIn(d_in))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// `act(x W + b)` as one fused op (see [`crate::ops::linear_act`]).
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        ops::linear_act(x, &self.weight, self.bias.as_ref(), act)
    }
}

/// A stack of linear layers, each followed by the activation: every layer
/// reads the previous layer's output (a known bug of public code applies
/// every layer to the original input).
#[derive(Clone, Debug)]
pub struct Stack {
    pub layers: Vec<Linear>,
    pub activation: Activation,
}

impl Stack {
    pub fn new(pb: &ParamBuilder, d_in: usize, units: &[usize], activation: Activation) -> Result<Self> {
        let mut layers = Vec::with_capacity(units.len());
        let mut d = d_in;
        for (i, &u) in units.iter().enumerate() {
            layers.push(Linear::new(&pb.pp(i.to_string()), d, u, true)?);
            d = u;
        }
        Ok(Self { layers, activation })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward_act(&h, self.activation)?;
        }
        Ok(h)
    }
}
