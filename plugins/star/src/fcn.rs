//! `star-fcn`: STAR's star-topology fully connected network.
//!
//! Per layer, shared `W [in, out]`, `b [out]` and per-domain `W_p`, `b_p`;
//! domain `p`'s effective layer is `W*_p = W (elementwise *) W_p`,
//! `b*_p = b + b_p`, and `out_p = act(in_p W*_p + b*_p)`, with the activation
//! after every layer (public code without activation between the layers
//! collapses the FCN into one linear map: a known bug). `W_p` starts at ones
//! and `b_p` at zeros, so training starts from the shared network; `W`, `b`
//! use PyTorch's `U(+-1/sqrt(in))`. Rows are grouped by domain: one matmul per
//! domain present and layer.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use mtrec_core::components::dense::Activation;
use mtrec_core::ops;
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};

use mtrec_core::groups::{domains_of, DomainGroups};

/// One star-topology linear layer. Parameter names (under its prefix):
/// `weight [in, out]`, `bias [out]`, `domain_weight [D, in, out]`,
/// `domain_bias [D, out]`.
#[derive(Clone, Debug)]
pub struct StarLinear {
    pub weight: Tensor,
    pub bias: Tensor,
    pub domain_weight: Tensor,
    pub domain_bias: Tensor,
}

impl StarLinear {
    pub fn new(pb: &ParamBuilder, d_in: usize, d_out: usize, domains: usize) -> Result<Self> {
        Ok(Self {
            weight: pb.get("weight", &[d_in, d_out], Init::FanIn(d_in))?,
            bias: pb.get("bias", &[d_out], Init::FanIn(d_in))?,
            domain_weight: pb.get("domain_weight", &[domains, d_in, d_out], Init::Ones)?,
            domain_bias: pb.get("domain_bias", &[domains, d_out], Init::Zeros)?,
        })
    }

    pub fn out_width(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Domain `p`'s effective weight `W * W_p` `[in, out]` and bias
    /// `b + b_p` `[out]`.
    pub fn effective(&self, p: usize) -> Result<(Tensor, Tensor)> {
        let w = self.weight.mul(&self.domain_weight.get(p)?)?;
        let b = self.bias.add(&self.domain_bias.get(p)?)?;
        Ok((w, b))
    }

    /// `x W*_p + b*_p` for rows `x` `[n, in]` all of domain `p`.
    pub fn forward_domain(&self, x: &Tensor, p: usize) -> Result<Tensor> {
        self.forward_domain_act(x, p, Activation::Identity)
    }

    /// `act(x W*_p + b*_p)`: one fused op (matmul, bias and activation with a
    /// one-pass backward, `mtrec_core::ops::linear_act`) on the effective
    /// weights; autograd carries its weight gradient on to `W` and `W_p`
    /// through the elementwise product.
    pub fn forward_domain_act(&self, x: &Tensor, p: usize, act: Activation) -> Result<Tensor> {
        let (w, b) = self.effective(p)?;
        ops::linear_act(x, &w, Some(&b), act)
    }
}

/// Star-topology layers with the activation after each.
#[derive(Clone, Debug)]
pub struct StarStack {
    pub layers: Vec<StarLinear>,
    pub activation: Activation,
}

impl StarStack {
    /// Layer `i` is named `<prefix>.<i>.*`.
    pub fn new(
        pb: &ParamBuilder,
        d_in: usize,
        units: &[usize],
        domains: usize,
        activation: Activation,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(units.len());
        let mut d = d_in;
        for (i, &u) in units.iter().enumerate() {
            layers.push(StarLinear::new(&pb.pp(i.to_string()), d, u, domains)?);
            d = u;
        }
        Ok(Self { layers, activation })
    }

    /// The stack on rows `x` all of domain `p`.
    pub fn forward_domain(&self, x: &Tensor, p: usize) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward_domain_act(&h, p, self.activation)?;
        }
        Ok(h)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarFcnParams {
    /// Layer widths, e.g. `[64, 32]`.
    pub units: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
}

pub struct StarFcn {
    domains: usize,
    pub stack: StarStack,
}

impl Layer for StarFcn {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let doms = domains_of(ctx, "star-fcn", self.domains)?;
        DomainGroups::new(doms)?.map(x, |p, xp| self.stack.forward_domain(xp, p))
    }
}

impl Default for StarFcnParams {
    fn default() -> Self {
        Self {
            units: vec![64, 32],
            activation: Activation::Relu,
        }
    }
}

pub struct StarFcnKind;

impl Kind for StarFcnKind {
    type Params = StarFcnParams;
    fn name(&self) -> &'static str {
        "star-fcn"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "STAR star-topology FCN: per layer act(x (W*W_p) + b + b_p), shared W, b and per-domain W_p, b_p"
    }
    fn check(&self, p: &StarFcnParams, _io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("`star-fcn` has per-domain weights, but the data has no domains (no domain column)".into());
        }
        check_units(&p.units, false)?;
        Ok(Port::Dense {
            width: p.units.last().copied().unwrap_or(0),
        })
    }
    fn build(&self, p: &StarFcnParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d_in = io.inputs.first().map_or(0, |p| p.width());
        Ok(Component::Layer(Box::new(StarFcn {
            domains: env.domains,
            stack: StarStack::new(pb, d_in, &p.units, env.domains, p.activation)?,
        })))
    }
}

mtrec_core::register_kind!(StarFcnKind);
