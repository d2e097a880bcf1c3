//! `sar-gate` (a gate): SAR-Net's multi-scenario gating. Weights
//! `softmax([x; e_s] W + b)` over every expert usable for the row (the shared
//! bank, then the row's own scenario's bank: see `sar-experts`), with `e_s`
//! an embedding of the row's scenario: the gate is conditioned on both the
//! scenario and the input. The runtime mixes the banks with these weights
//! and records them (expert utilisation overall and per domain).

use candle_core::Tensor;
use mtrec_core::components::dense::Linear;
use mtrec_core::groups::domains_of;
use mtrec_core::ops::Activation;
use mtrec_core::{Component, ForwardCtx, Gate, GraphEnv, Init, Kind, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioGateParams {
    /// Width of the scenario embedding the gate reads.
    #[serde(default = "default_dim")]
    pub embedding_dim: usize,
    #[serde(default = "default_bias")]
    pub bias: bool,
}

fn default_dim() -> usize {
    4
}
fn default_bias() -> bool {
    true
}

impl Default for ScenarioGateParams {
    fn default() -> Self {
        Self {
            embedding_dim: default_dim(),
            bias: default_bias(),
        }
    }
}

pub struct ScenarioGate {
    domains: usize,
    /// `[D, e]`
    embedding: Tensor,
    linear: Linear,
}

impl Gate for ScenarioGate {
    fn weights(&self, selector: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let d = domains_of(ctx, "sar-gate", self.domains)?;
        let e = self.embedding.index_select(d.tensor(), 0)?;
        let z = Tensor::cat(&[selector, &e], 1)?;
        // One fused op with its backward: matmul, bias, row softmax.
        self.linear.forward_act(&z, Activation::Softmax)
    }
}

pub struct ScenarioGateKind;

impl Kind for ScenarioGateKind {
    type Params = ScenarioGateParams;
    fn name(&self) -> &'static str {
        "sar-gate"
    }
    fn role(&self) -> Role {
        Role::Gate
    }
    fn summary(&self) -> &'static str {
        "SAR-Net multi-scenario gate softmax([x; scenario embedding] W + b) over its `experts` banks"
    }
    fn check(&self, p: &ScenarioGateParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("needs data with domains (a domain id per row)".into());
        }
        if p.embedding_dim == 0 {
            return Err("`embedding_dim` must be at least 1".into());
        }
        Ok(Port::Dense {
            width: io.experts.first().map_or(0, |p| p.width()),
        })
    }
    fn build(&self, p: &ScenarioGateParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let n = io.expert_count();
        let d_sel = io.inputs[0].width();
        let embedding = pb.get(
            "scenario_embedding",
            &[env.domains, p.embedding_dim],
            Init::Uniform { lo: -0.05, hi: 0.05 },
        )?;
        let linear = Linear::new(pb, d_sel + p.embedding_dim, n, p.bias)?;
        Ok(Component::Gate(Box::new(ScenarioGate {
            domains: env.domains,
            embedding,
            linear,
        })))
    }
}

mtrec_core::register_kind!(ScenarioGateKind);
