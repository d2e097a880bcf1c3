//! `mlp-experts`: a bank of identical-shaped MLP experts run as batched matmuls.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::dense::Activation;
use crate::component::{Component, Expert, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo};
use crate::inputs::ForwardCtx;
use crate::ops;
use crate::params::{Init, ParamBuilder};
use crate::protocol::{check_units, Kind};

/// `mlp-experts` parameters. `count` and `units` must be written (the
/// defaults, the MMoE paper's 8 experts of `[16]`, only show the syntax).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpExpertsParams {
    /// Number of experts in the bank.
    pub count: usize,
    /// Layer widths of each expert, e.g. `[16]` (the MMoE paper) or `[256, 128]`.
    pub units: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
}

impl Default for MlpExpertsParams {
    fn default() -> Self {
        Self {
            count: 8,
            units: vec![16],
            activation: Activation::Relu,
        }
    }
}

/// Weights `[n, in, out]` per layer, biases `[n, 1, out]`: the `n` experts'
/// layer `l` is one fused op (matmuls, bias, activation; see [`crate::ops`]).
/// Each expert draws its own initial values (identical experts would stay
/// identical: a known bug of public code). Parameter names (under the
/// bank's prefix): `<layer>.weight`, `<layer>.bias`.
pub struct MlpExperts {
    layers: Vec<(Tensor, Tensor, Activation)>,
}

impl MlpExperts {
    /// `count` experts of layers `units`, `activation` after every layer.
    pub fn new(pb: &ParamBuilder, count: usize, d_in: usize, units: &[usize], activation: Activation) -> Result<Self> {
        Self::with_acts(pb, count, d_in, units, &vec![activation; units.len()])
    }

    /// `count` experts of layers `units`, layer `l` followed by `acts[l]`
    /// (e.g. a linear last layer).
    pub fn with_acts(
        pb: &ParamBuilder,
        count: usize,
        d_in: usize,
        units: &[usize],
        acts: &[Activation],
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(units.len());
        let mut d = d_in;
        for (i, (&u, &act)) in units.iter().zip(acts).enumerate() {
            let l = pb.pp(i.to_string());
            layers.push((
                l.get("weight", &[count, d, u], Init::FanIn(d))?,
                l.get("bias", &[count, 1, u], Init::FanIn(d))?,
                act,
            ));
            d = u;
        }
        Ok(Self { layers })
    }

    /// `[B, in]` -> `[count, B, out]`. The first layer reads `[B, d]` for
    /// every expert (no broadcast copy); each layer is one fused op over
    /// the whole bank.
    pub fn forward_bank(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (w, b, act) in &self.layers {
            h = ops::linear_act(&h, w, Some(b), *act)?;
        }
        Ok(h)
    }
}

impl Expert for MlpExperts {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_bank(x)
    }
}

pub struct MlpExpertsKind;

impl Kind for MlpExpertsKind {
    type Params = MlpExpertsParams;
    fn name(&self) -> &'static str {
        "mlp-experts"
    }
    fn role(&self) -> Role {
        Role::Expert
    }
    fn summary(&self) -> &'static str {
        "bank of `count` MLP experts with layers `units`, run as batched matmuls"
    }
    fn check(&self, p: &MlpExpertsParams, _io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        if p.count == 0 {
            return Err("`count` must be at least 1".into());
        }
        check_units(&p.units, false)?;
        Ok(Port::Bank {
            count: p.count,
            width: *p.units.last().unwrap_or(&0),
        })
    }
    fn build(&self, p: &MlpExpertsParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let e = MlpExperts::new(pb, p.count, io.inputs[0].width(), &p.units, p.activation)?;
        Ok(Component::Expert(Box::new(e)))
    }
}

crate::register_kind!(MlpExpertsKind);
