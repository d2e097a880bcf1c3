//! `star-tower`: a task's head in STAR. The main network's logit `s_m` (star
//! layers to one output, per domain) plus the auxiliary network's `s_a`
//! (domain-indicator embedding -> 2-layer MLP -> scalar); the task's output
//! is the logit `s_m + s_a`, so that the prediction is `sigmoid(s_m + s_a)`.
//!
//! Why one node and not a graph-level sum: a task's output must be its tower
//! (towers end the graph and read exactly one input), so a separate
//! `domain-aux` node could only be concatenated into the tower's input, which
//! would make `s_a` a feature of the main network, not an additive logit. The
//! auxiliary network reads only the domain id, which every component receives
//! in its forward context, so the tower can hold it without extra wiring.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use mtrec_core::components::dense::{Activation, Linear, Stack};
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, NodeIo, ParamBuilder, Port, Result, Role, Tower};

use crate::fcn::{StarLinear, StarStack};
use mtrec_core::groups::{domains_of, DomainGroups};

fn default_true() -> bool {
    true
}
fn default_embedding_dim() -> usize {
    8
}
fn default_aux_units() -> Vec<usize> {
    vec![8]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarTowerParams {
    /// Hidden star-topology layers before the star output layer; may be empty.
    #[serde(default)]
    pub units: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    /// Add the auxiliary network's logit.
    #[serde(default = "default_true")]
    pub aux: bool,
    /// Width of the domain-indicator embedding of the auxiliary network.
    #[serde(default = "default_embedding_dim")]
    pub aux_embedding_dim: usize,
    /// Hidden layers of the auxiliary MLP (ReLU), then a linear map to one
    /// output: `[8]` is the paper's small 2-layer MLP.
    #[serde(default = "default_aux_units")]
    pub aux_units: Vec<usize>,
}

impl Default for StarTowerParams {
    fn default() -> Self {
        Self {
            units: Vec::new(),
            activation: Activation::Relu,
            aux: true,
            aux_embedding_dim: default_embedding_dim(),
            aux_units: default_aux_units(),
        }
    }
}

/// The auxiliary network. Parameter names: `embedding [D, e]`,
/// `hidden.<i>.{weight,bias}`, `out.{weight,bias}`.
pub struct AuxNet {
    embedding: Tensor,
    hidden: Stack,
    out: Linear,
}

impl AuxNet {
    pub fn new(pb: &ParamBuilder, domains: usize, dim: usize, units: &[usize]) -> Result<Self> {
        // N(0, 1), PyTorch's `nn.Embedding` default. With a small uniform
        // (U(+-0.05)) the hidden ReLUs' pre-activations were set by their
        // biases alone, the same sign for every domain: with some seeds every
        // unit started dead and stayed dead, and `s_a` was one constant for
        // all domains (the auxiliary network lost the domain).
        let embedding = pb.get("embedding", &[domains, dim], Init::Normal { mean: 0.0, std: 1.0 })?;
        let hidden = Stack::new(&pb.pp("hidden"), dim, units, Activation::Relu)?;
        let out = Linear::new(&pb.pp("out"), units.last().copied().unwrap_or(dim), 1, true)?;
        Ok(Self { embedding, hidden, out })
    }

    /// The hidden activations of every domain, `[D, units]` (the input of
    /// the output layer).
    pub fn hidden_per_domain(&self) -> Result<Tensor> {
        self.hidden.forward(&self.embedding)
    }

    /// `s_a` of every domain, `[D, 1]`: the network reads only the domain
    /// indicator, so it runs once per domain, not once per row.
    pub fn per_domain(&self) -> Result<Tensor> {
        self.out.forward(&self.hidden.forward(&self.embedding)?)
    }
}

pub struct StarTower {
    domains: usize,
    hidden: StarStack,
    out: StarLinear,
    aux: Option<AuxNet>,
}

impl StarTower {
    /// The main network's logit `s_m` `[B, 1]` (without the auxiliary logit).
    pub fn main_logit(&self, x: &Tensor, groups: &DomainGroups) -> Result<Tensor> {
        groups.map(x, |p, xp| {
            self.out.forward_domain(&self.hidden.forward_domain(xp, p)?, p)
        })
    }
}

impl Tower for StarTower {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let doms = domains_of(ctx, "star-tower", self.domains)?;
        let s_m = self.main_logit(x, &DomainGroups::new(doms)?)?;
        match &self.aux {
            None => Ok(s_m),
            Some(aux) => {
                let s_a = aux.per_domain()?.index_select(doms.tensor(), 0)?;
                Ok((s_m + s_a)?)
            }
        }
    }
}

pub struct StarTowerKind;

impl Kind for StarTowerKind {
    type Params = StarTowerParams;
    fn name(&self) -> &'static str {
        "star-tower"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "STAR task head: star-topology layers to the logit s_m, plus the auxiliary network's s_a (domain embedding -> MLP)"
    }
    fn check(&self, p: &StarTowerParams, _io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("`star-tower` has per-domain weights, but the data has no domains (no domain column)".into());
        }
        check_units(&p.units, true)?;
        if p.aux {
            if p.aux_embedding_dim == 0 {
                return Err("`aux_embedding_dim` must be at least 1".into());
            }
            if p.aux_units.contains(&0) {
                return Err(format!("`aux_units` = {:?} has a zero width", p.aux_units));
            }
        }
        Ok(Port::Dense { width: 1 })
    }
    fn build(&self, p: &StarTowerParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d_in = io.inputs.first().map_or(0, |p| p.width());
        let hidden = StarStack::new(&pb.pp("hidden"), d_in, &p.units, env.domains, p.activation)?;
        let last = p.units.last().copied().unwrap_or(d_in);
        let out = StarLinear::new(&pb.pp("out"), last, 1, env.domains)?;
        let aux = if p.aux {
            Some(AuxNet::new(
                &pb.pp("aux"),
                env.domains,
                p.aux_embedding_dim,
                &p.aux_units,
            )?)
        } else {
            None
        };
        Ok(Component::Tower(Box::new(StarTower {
            domains: env.domains,
            hidden,
            out,
            aux,
        })))
    }
}

mtrec_core::register_kind!(StarTowerKind);
