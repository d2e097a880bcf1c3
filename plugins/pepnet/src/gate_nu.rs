//! The Gate Neural Unit, PEPNet's building block (paper section 3.2):
//! `x' = ReLU(x W + b)`, `delta = gamma * sigmoid(x' W' + b')`, so every
//! factor lies in `(0, gamma)`. With `gamma = 2` a factor of 1 means "no
//! change", and a freshly initialised unit (small logits) starts near it.

use candle_core::Tensor;
use mtrec_core::components::dense::{Activation, Linear};
use mtrec_core::{ParamBuilder, Result};

/// Checks a Gate NU's keys; an error names the failing key.
pub fn check_gate(hidden: usize, gamma: f64) -> std::result::Result<(), (&'static str, String)> {
    if hidden == 0 {
        return Err((
            "gate_hidden",
            "`gate_hidden` must be at least 1 (the Gate NU's hidden ReLU layer)".into(),
        ));
    }
    if !(gamma.is_finite() && gamma > 0.0) {
        return Err((
            "gamma",
            format!(
                "`gamma` = {gamma} must be a finite number above 0 (the paper's 2 lets a factor of 1 mean no change)"
            ),
        ));
    }
    Ok(())
}

/// One Gate NU: `[B, d_in] -> [B, d_out]` factors in `(0, gamma)`.
#[derive(Clone, Debug)]
pub struct GateNu {
    /// `W, b`: the layer that crosses the prior information with the input.
    pub hidden: Linear,
    /// `W', b'`: the layer that gives one score per factor.
    pub out: Linear,
    pub gamma: f64,
}

impl GateNu {
    /// Weights `<pb>.hidden.{weight,bias}` and `<pb>.out.{weight,bias}`.
    pub fn new(pb: &ParamBuilder, d_in: usize, hidden: usize, d_out: usize, gamma: f64) -> Result<Self> {
        Ok(Self {
            hidden: Linear::new(&pb.pp("hidden"), d_in, hidden, true)?,
            out: Linear::new(&pb.pp("out"), hidden, d_out, true)?,
            gamma,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.hidden.forward_act(x, Activation::Relu)?;
        let s = self.out.forward_act(&h, Activation::Sigmoid)?;
        Ok(s.affine(self.gamma, 0.0)?)
    }
}
