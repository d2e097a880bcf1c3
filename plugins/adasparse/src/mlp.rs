//! `adasparse-mlp`: the shared MLP with a domain-aware pruner after every
//! hidden layer (a layer kind).
//!
//! Per hidden layer `l`: `h_l = act(h_(l-1) W_l + b_l)`, the pruner's
//! factors `pi_l` from `[h_l; e_p]` ([`crate::pruner`]), `h_l <- h_l * pi_l`.
//! The sharpness `alpha_t` follows the optimizer steps of training passes
//! (`ForwardCtx::step`) and is written to the buffer `alpha` on every
//! training pass; evaluation passes read the buffer and never change it, so
//! a model loaded from its weights evaluates with the sharpness training
//! reached. Training passes add the sparsity regulariser
//! (`ForwardCtx::add_penalty`) when its weight is above 0.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use mtrec_core::components::dense::{Activation, Linear};
use mtrec_core::groups::domains_of;
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};

use crate::pruner::{FactorRule, LayerFactors, Pruner, Sharpness, SparsityTarget, Variant};

/// `adasparse-mlp` parameters (the `adasparse` template's, without the towers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaSparseMlpParams {
    /// Hidden layer widths of the shared MLP, each pruned, e.g. `[64, 32]`.
    pub units: Vec<usize>,
    pub activation: Activation,
    pub variant: Variant,
    /// Width of the pruners' domain embedding `e_p`.
    pub domain_dim: usize,
    /// Upper bound `beta` of Scaling's and Fusion's factors, > 0.
    pub beta: f64,
    /// Fusion's pruning threshold `epsilon`: factors below it are set to 0.
    pub epsilon: f64,
    /// Sharpness `alpha_t = min(alpha_max, alpha_start + alpha_growth * t)`
    /// after `t` optimizer steps (Binarization and Fusion).
    pub alpha_start: f64,
    pub alpha_growth: f64,
    pub alpha_max: f64,
    /// Target ratio `r` of pruned neurons per layer and row, in `[0, 1)`.
    pub target_sparsity: f64,
    /// No penalty while the ratio is within `r +- sparsity_tolerance`.
    pub sparsity_tolerance: f64,
    /// Weight `lambda` of the sparsity regulariser (0: off).
    pub sparsity_weight: f64,
}

impl Default for AdaSparseMlpParams {
    fn default() -> Self {
        Self {
            units: vec![64, 32],
            activation: Activation::Relu,
            variant: Variant::Fusion,
            domain_dim: 8,
            beta: 2.0,
            epsilon: 0.25,
            alpha_start: 1.0,
            alpha_growth: 0.005,
            alpha_max: 10.0,
            target_sparsity: 0.3,
            sparsity_tolerance: 0.05,
            sparsity_weight: 0.1,
        }
    }
}

impl AdaSparseMlpParams {
    /// What is wrong with these values, if anything (the key named).
    pub fn problem(&self) -> Option<String> {
        if let Err(e) = check_units(&self.units, false) {
            return Some(e);
        }
        let finite = |key: &str, v: f64| (!v.is_finite()).then(|| format!("`{key}` = {v} must be finite"));
        let checks = [
            finite("beta", self.beta),
            finite("epsilon", self.epsilon),
            finite("alpha_start", self.alpha_start),
            finite("alpha_growth", self.alpha_growth),
            finite("alpha_max", self.alpha_max),
            finite("sparsity_weight", self.sparsity_weight),
            (self.domain_dim == 0).then(|| "`domain_dim` must be at least 1".to_string()),
            (self.beta <= 0.0).then(|| format!("`beta` = {} must be > 0", self.beta)),
            (self.epsilon < 0.0 || self.epsilon >= self.beta)
                .then(|| format!("`epsilon` = {} must be in [0, beta = {})", self.epsilon, self.beta)),
            (self.alpha_start <= 0.0).then(|| format!("`alpha_start` = {} must be > 0", self.alpha_start)),
            (self.alpha_growth < 0.0).then(|| format!("`alpha_growth` = {} must be >= 0", self.alpha_growth)),
            (self.alpha_max < self.alpha_start).then(|| {
                format!(
                    "`alpha_max` = {} must be at least `alpha_start` = {}",
                    self.alpha_max, self.alpha_start
                )
            }),
            (!(0.0..1.0).contains(&self.target_sparsity))
                .then(|| format!("`target_sparsity` = {} must be in [0, 1)", self.target_sparsity)),
            (!(self.sparsity_tolerance >= 0.0 && self.sparsity_tolerance < 1.0))
                .then(|| format!("`sparsity_tolerance` = {} must be in [0, 1)", self.sparsity_tolerance)),
            (self.sparsity_weight < 0.0).then(|| format!("`sparsity_weight` = {} must be >= 0", self.sparsity_weight)),
        ];
        checks.into_iter().flatten().next()
    }

    pub fn sharpness(&self) -> Sharpness {
        Sharpness {
            start: self.alpha_start,
            growth: self.alpha_growth,
            max: self.alpha_max,
        }
    }
}

/// The built layer. Names: `layers.<l>.{weight,bias}`, `pruners.<l>.*`
/// ([`Pruner`]), `domain_embedding [D, e]`, buffer `alpha [1]`.
pub struct AdaSparseMlp {
    domains: usize,
    layers: Vec<Linear>,
    activation: Activation,
    pruners: Vec<Pruner>,
    embedding: Tensor,
    alpha: Var,
    sharpness: Sharpness,
    rule: FactorRule,
    sparsity: SparsityTarget,
}

impl AdaSparseMlp {
    pub fn new(pb: &ParamBuilder, d_in: usize, domains: usize, p: &AdaSparseMlpParams) -> Result<Self> {
        let mut layers = Vec::with_capacity(p.units.len());
        let mut pruners = Vec::with_capacity(p.units.len());
        let mut d = d_in;
        for (l, &u) in p.units.iter().enumerate() {
            layers.push(Linear::new(&pb.pp(format!("layers.{l}")), d, u, true)?);
            pruners.push(Pruner::new(&pb.pp(format!("pruners.{l}")), u, p.domain_dim)?);
            d = u;
        }
        // N(0, 1) like an `nn.Embedding`: domains start apart, so that their
        // factors differ from the first step.
        let embedding = pb.get(
            "domain_embedding",
            &[domains, p.domain_dim],
            Init::Normal { mean: 0.0, std: 1.0 },
        )?;
        let sharpness = p.sharpness();
        let alpha = pb.buffer("alpha", &[1], Init::Zeros)?;
        alpha.set(&Tensor::new(&[sharpness.at(0) as f32], pb.device())?)?;
        Ok(Self {
            domains,
            layers,
            activation: p.activation,
            pruners,
            embedding,
            alpha,
            sharpness,
            rule: FactorRule {
                variant: p.variant,
                beta: p.beta,
                epsilon: p.epsilon,
            },
            sparsity: SparsityTarget {
                ratio: p.target_sparsity,
                tolerance: p.sparsity_tolerance,
                weight: p.sparsity_weight,
            },
        })
    }

    /// The sharpness this pass uses: in training the schedule's value at
    /// `ctx.step`, recorded in the `alpha` buffer; in evaluation the buffer.
    pub fn alpha(&self, ctx: &ForwardCtx) -> Result<f64> {
        if ctx.train {
            let a = self.sharpness.at(ctx.step);
            self.alpha.set(&Tensor::new(&[a as f32], self.alpha.device())?)?;
            Ok(a)
        } else {
            Ok(f64::from(self.alpha.as_tensor().get(0)?.to_scalar::<f32>()?))
        }
    }

    /// The output `[B, units.last]` and every layer's factors.
    pub fn forward_with_factors(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<(Tensor, Vec<LayerFactors>)> {
        let doms = domains_of(ctx, "adasparse-mlp", self.domains)?;
        let alpha = self.alpha(ctx)?;
        let mut h = x.clone();
        let mut all = Vec::with_capacity(self.layers.len());
        for (layer, pruner) in self.layers.iter().zip(&self.pruners) {
            h = layer.forward_act(&h, self.activation)?;
            let v = pruner.scores(&h, &self.embedding, doms.tensor())?;
            let f = self.rule.factors(&v, alpha)?;
            h = h.mul(&f.factors)?;
            all.push(f);
        }
        Ok((h, all))
    }

    /// The sparsity regulariser of these factors (see [`SparsityTarget::penalty`]).
    pub fn penalty(&self, factors: &[LayerFactors]) -> Result<Tensor> {
        self.sparsity.penalty(factors)
    }
}

impl Layer for AdaSparseMlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (h, factors) = self.forward_with_factors(x, ctx)?;
        if ctx.train && ctx.penalties.is_some() && self.sparsity.weight > 0.0 {
            ctx.add_penalty("adasparse-mlp sparsity", self.penalty(&factors)?)?;
        }
        Ok(h)
    }
}

pub struct AdaSparseMlpKind;

impl Kind for AdaSparseMlpKind {
    type Params = AdaSparseMlpParams;
    fn name(&self) -> &'static str {
        "adasparse-mlp"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "AdaSparse MLP: per hidden layer h <- h * pi, pi from a domain-aware pruner (binarization|scaling|fusion), sparsity regulariser"
    }
    fn check(&self, p: &AdaSparseMlpParams, _io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("`adasparse-mlp` prunes per domain, but the data has no domains (no domain column)".into());
        }
        if let Some(problem) = p.problem() {
            return Err(problem);
        }
        Ok(Port::Dense {
            width: p.units.last().copied().unwrap_or(0),
        })
    }
    fn build(&self, p: &AdaSparseMlpParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d_in = io.inputs.first().map_or(0, |p| p.width());
        Ok(Component::Layer(Box::new(AdaSparseMlp::new(pb, d_in, env.domains, p)?)))
    }
}

mtrec_core::register_kind!(AdaSparseMlpKind);
