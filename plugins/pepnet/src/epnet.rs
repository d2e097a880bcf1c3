//! `epnet` (a layer): the Embedding Personalized Network (paper section
//! 3.3). `delta_domain = GateNU(E(F_d) (+) stopgrad(E))`, `O_ep =
//! delta_domain * E`: the domain-side features `F_d` (here the row's domain
//! id through a table of this node, plus any named domain features) rescale
//! the shared input `E` per row, one factor per input column.
//!
//! `E` enters the gate with its gradient stopped: the gate learns how each
//! domain reweighs the shared embeddings, and the embeddings learn only
//! through the reweighed output, so the domain gates cannot drag the shared
//! embeddings toward one domain.

use candle_core::Tensor;
use mtrec_core::groups::domains_of;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

use crate::gate_nu::{check_gate, GateNu};
use crate::{check_names, DEFAULT_GAMMA, DEFAULT_GATE_HIDDEN};

/// `epnet` parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpnetParams {
    /// Domain-side features besides the domain id (sparse: their
    /// embeddings; dense: their values), e.g. a domain's exposure counts.
    pub domain_features: Vec<String>,
    /// Width of this node's embedding of the domain id.
    pub domain_dim: usize,
    /// Width of the Gate NU's hidden layer.
    pub gate_hidden: usize,
    /// The Gate NU's `gamma`: factors lie in `(0, gamma)`.
    pub gamma: f64,
}

impl Default for EpnetParams {
    fn default() -> Self {
        Self {
            domain_features: Vec::new(),
            domain_dim: 4,
            gate_hidden: DEFAULT_GATE_HIDDEN,
            gamma: DEFAULT_GAMMA,
        }
    }
}

pub struct Epnet {
    domains: usize,
    /// `[D, domain_dim]`: `E(domain id)`.
    pub domain_embedding: Tensor,
    domain_features: Vec<String>,
    pub gate: GateNu,
}

impl Epnet {
    /// `delta_domain` of each row, `[B, W]`.
    pub fn factors(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let d = domains_of(ctx, "epnet", self.domains)?;
        let mut parts = vec![self.domain_embedding.index_select(d.tensor(), 0)?];
        if !self.domain_features.is_empty() {
            parts.push(ctx.views("epnet")?.features(&self.domain_features)?);
        }
        parts.push(x.detach());
        self.gate.forward(&Tensor::cat(&parts, 1)?)
    }
}

impl Layer for Epnet {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        Ok((x * self.factors(x, ctx)?)?)
    }
}

pub struct EpnetKind;

impl Kind for EpnetKind {
    type Params = EpnetParams;
    fn name(&self) -> &'static str {
        "epnet"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "PEPNet's EPNet: input * GateNU([domain embedding; domain_features; stopgrad(input)]), factors in (0, gamma)"
    }
    fn check(&self, p: &EpnetParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("needs data with domains (a domain id per row)".into());
        }
        if p.domain_dim == 0 {
            return Err("`domain_dim` must be at least 1 (the width of the domain id's embedding)".into());
        }
        check_names("domain_features", &p.domain_features, env)?;
        check_gate(p.gate_hidden, p.gamma).map_err(|(_, m)| m)?;
        Ok(io.inputs[0])
    }
    fn build(&self, p: &EpnetParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let width = io.inputs[0].width();
        let side: usize = p
            .domain_features
            .iter()
            .filter_map(|n| env.features.feature_width(n))
            .sum();
        let domain_embedding = pb.get(
            "domain_embedding",
            &[env.domains, p.domain_dim],
            Init::Uniform { lo: -0.05, hi: 0.05 },
        )?;
        let gate = GateNu::new(
            &pb.pp("gate"),
            p.domain_dim + side + width,
            p.gate_hidden,
            width,
            p.gamma,
        )?;
        Ok(Component::Layer(Box::new(Epnet {
            domains: env.domains,
            domain_embedding,
            domain_features: p.domain_features.clone(),
            gate,
        })))
    }
}

mtrec_core::register_kind!(EpnetKind);
