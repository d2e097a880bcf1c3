//! `ait`: the Adaptive Information Transfer module, an attention over the
//! vectors it reads.
//!
//! For inputs `u_1..u_n` (each `[B, d]`; AITM gives two, `p_(t-1)` and
//! `q_t`): `z = sum_u w_u h1(u)`, `w_u = softmax_u(<h2(u), h3(u)> / sqrt(k))`,
//! with `h1, h2, h3` linear maps `d -> k` (bias-free by default, as in the
//! authors' code). The scores compare each vector with itself, not with the
//! others: the module weighs how much of the transferred information and
//! how much of the task's own representation to keep, per row.

use candle_core::{Tensor, D};
use mtrec_core::components::dense::Linear;
use mtrec_core::{Component, ForwardCtx, Fusion, GraphEnv, Kind, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

/// `ait` parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AitParams {
    /// `k`, the width of `h1, h2, h3`'s outputs and so of `z`; absent: the
    /// inputs' width (AITM's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Biases in `h1, h2, h3`.
    pub bias: bool,
}

struct Ait {
    h1: Linear,
    h2: Linear,
    h3: Linear,
    scale: f64,
}

impl Ait {
    /// `[B, n]` attention weights and `[B, n, k]` values of `xs` (n `[B, d]`).
    fn weights_and_values(&self, xs: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let u = Tensor::stack(xs, 1)?;
        let (b, n, d) = u.dims3()?;
        let flat = u.reshape((b * n, d))?;
        let value = self.h1.forward(&flat)?;
        let k = value.dim(1)?;
        let score = (self.h2.forward(&flat)? * self.h3.forward(&flat)?)?.sum(1)?;
        let score = (score.reshape((b, n))? * self.scale)?;
        let w = candle_nn::ops::softmax(&score, D::Minus1)?;
        Ok((w, value.reshape((b, n, k))?))
    }
}

impl Fusion for Ait {
    fn forward(&self, xs: &[Tensor], _ctx: &ForwardCtx) -> Result<Tensor> {
        let (w, value) = self.weights_and_values(xs)?;
        Ok(value.broadcast_mul(&w.unsqueeze(2)?)?.sum(1)?)
    }
}

/// The `ait` component kind (a fusion).
pub struct AitKind;

impl Kind for AitKind {
    type Params = AitParams;
    fn name(&self) -> &'static str {
        "ait"
    }
    fn role(&self) -> Role {
        Role::Fusion
    }
    fn summary(&self) -> &'static str {
        "AITM's attention over its inputs (all of one width d): sum_u softmax_u(<h2 u, h3 u> / sqrt(k)) h1 u, h_i: d -> k (dim = k, bias = false)"
    }
    fn check(&self, p: &AitParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        let widths: Vec<usize> = io.inputs.iter().map(|p| p.width()).collect();
        if widths.len() < 2 {
            return Err(format!(
                "`ait` attends over at least two inputs (AITM: the transferred p_(t-1) and the task's q_t), got {}",
                widths.len()
            ));
        }
        if widths.iter().any(|&w| w != widths[0]) {
            return Err(format!(
                "width mismatch: `ait` reads inputs of one width (the same maps h1, h2, h3 apply to each), got {widths:?}"
            ));
        }
        let k = p.dim.unwrap_or(widths[0]);
        if k == 0 {
            return Err("`dim` must be at least 1".into());
        }
        Ok(Port::Dense { width: k })
    }
    fn build(&self, p: &AitParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d = io.inputs[0].width();
        let k = p.dim.unwrap_or(d);
        Ok(Component::Fusion(Box::new(Ait {
            h1: Linear::new(&pb.pp("h1"), d, k, p.bias)?,
            h2: Linear::new(&pb.pp("h2"), d, k, p.bias)?,
            h3: Linear::new(&pb.pp("h3"), d, k, p.bias)?,
            scale: 1.0 / (k as f64).sqrt(),
        })))
    }
}

mtrec_core::register_kind!(AitKind);
