//! A fully connected layer and activations: the bricks of every MLP.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ops::{self, Act};
use crate::params::{Init, ParamBuilder};

/// Activation between layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    Relu,
    Sigmoid,
    Tanh,
    /// No activation.
    Linear,
}

impl Activation {
    /// The fused ops' activation.
    pub fn act(self) -> Act {
        match self {
            Activation::Relu => Act::Relu,
            Activation::Sigmoid => Act::Sigmoid,
            Activation::Tanh => Act::Tanh,
            Activation::Linear => Act::Identity,
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
            Activation::Tanh => x.tanh()?,
            Activation::Linear => x.clone(),
        })
    }
}

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
        self.forward_act(x, Act::Identity)
    }

    /// `act(x W + b)` as one fused op (see [`crate::ops::linear_act`]).
    pub fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
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
            h = l.forward_act(&h, self.activation.act())?;
        }
        Ok(h)
    }
}
