//! AdaSparse (Yang et al., "AdaSparse: Learning Adaptively Sparse Structures
//! for Multi-Domain Click-Through Rate Prediction", CIKM 2022, arXiv
//! 2206.13108).
//!
//! One shared MLP serves every domain; after each hidden layer a light
//! *domain-aware pruner* gives neuron-wise factors that scale or remove the
//! layer's neurons for the row's domain, so that each domain runs its own
//! sparse sub-network of the shared one. With `p` the row's domain, `e_p` its
//! domain embedding and `h_l = act(h_(l-1) W_l + b_l)` hidden layer `l`:
//!
//! - scores `v_l = [h_l; e_p] W^pr_l + b^pr_l` (one linear map per layer),
//! - factors, by variant ([`Variant`]), with the sharpness `alpha_t`:
//!   - Binarization: `pi_l = sigmoid(alpha_t * v_l)`,
//!   - Scaling: `pi_l = beta * sigmoid(v_l)`,
//!   - Fusion: `pi_l = beta * sigmoid(alpha_t * v_l)` where that is at least
//!     `epsilon`, else 0,
//! - `h_l <- h_l * pi_l` (elementwise), read by layer `l + 1` or the towers;
//! - the sharpness `alpha_t = min(alpha_max, alpha_start + alpha_growth * t)`
//!   after `t` optimizer steps: the sigmoid approaches the 0/1 step as
//!   training goes on;
//! - the sparsity regulariser, added to the training objective outside the
//!   loss balancing (`ForwardCtx::add_penalty`):
//!   `R = lambda * mean_b sum_l max(0, |s_bl - r| - delta)^2` with
//!   `s_bl = 1 - mean_i sigmoid(alpha_t * v_bli)` the (relaxed) ratio of
//!   pruned neurons of row `b` in layer `l`, `r` the target ratio and
//!   `delta` a tolerance band.
//!
//! The `adasparse` template: `input -> adasparse-mlp -> one mlp-tower per
//! task` (`tower_units = []`: each task a linear head on the pruned MLP, the
//! paper's single-task model when there is one task). The paper's input is
//! the concatenation of the domain-aware and domain-agnostic features' embeddings:
//! give the model the domain as an input feature too (the synthetic data's
//! `domain` field, `[features] domain_as_feature` for tabular data).
//!
//! # Choices the paper leaves open (or that we could not read off it)
//!
//! The paper's method section itself was not available when this crate was
//! written (only its abstract, summaries of it and public implementations):
//! the variants' formulas above follow those, and where the paper's exact
//! form is unknown (the sharpness schedule, the regulariser's algebra) the
//! choice is ours and said so below.
//!
//! - **Pruner input.** The pruner of layer `l` reads that layer's output
//!   `h_l` (after the activation) and the domain embedding, and its factors
//!   multiply that same `h_l` (the paper's summaries: the pruner takes the
//!   layer's hidden representation with the domain embedding); the gradient
//!   flows through both paths. Only hidden layers are pruned, not the
//!   embedding layer.
//! - **Domain embedding.** The pruners share one embedding of the domain id
//!   `[D, domain_dim]` (N(0, 1) start, so that domains start apart), owned by
//!   the component: the domain id is the one domain-aware feature every
//!   component receives. The pruner's linear map is stored as its two
//!   blocks (`[h; e_p] W = h W_h + e_p W_e`) so the domain block runs once per
//!   domain, not per row.
//! - **Sharpness schedule.** Linear growth in the optimizer steps, capped
//!   (`alpha_max`), following training steps only ([`mlp`]): the value of
//!   the last training pass is kept in the buffer `alpha`, saved with the
//!   weights, and evaluation reads it. Scenario-Wise Rec increments its
//!   `alpha` on every forward pass, evaluation included, so its evaluated
//!   model depends on how often it was evaluated: a bug. The best-epoch
//!   weights restored at the end of training come with that epoch's `alpha`.
//! - **Binarization at evaluation.** The same sharpened sigmoid as in
//!   training (no hard threshold swapped in at evaluation, which would
//!   evaluate a model that was never trained).
//! - **Fusion's threshold** zeroes factors below `epsilon` through a constant
//!   0/1 mask (no gradient through the mask, full gradient through the kept
//!   factors). Scenario-Wise Rec multiplies by `sign(pi - epsilon)`, which
//!   negates pruned neurons instead of removing them; its Binarization
//!   returns `sign(.)` alone, a constant without gradient, so its pruner
//!   never learns. Neither is copied.
//! - **The regulariser** is defined per row (each row's sub-network is what
//!   is served), on the relaxed keep scores `sigmoid(alpha_t * v)` (for
//!   Scaling `sigmoid(v)`) so that it has a gradient, squared outside a
//!   tolerance band, summed over layers and averaged over rows. Being a mean
//!   over rows, it splits exactly over data-parallel ranks (the trainer
//!   scales it like a task's loss). The paper introduces it for
//!   Binarization; here every variant may use it (`sparsity_weight = 0`
//!   turns it off).
//! - **Defaults** are sized for the built-in synthetic data (`[64, 32]`,
//!   `beta = 2`, `epsilon = 0.25`, `alpha` from 1 by 0.005 per step up to 10,
//!   target ratio 0.3 +- 0.05 with weight 0.1); set them for real data.

pub mod mlp;
pub mod pruner;

use mtrec_core::components::dense::Activation;
use mtrec_core::protocol::towers;
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, Template, INPUT};
use serde::{Deserialize, Serialize};

pub use mlp::{AdaSparseMlp, AdaSparseMlpKind, AdaSparseMlpParams};
pub use pruner::{FactorRule, LayerFactors, Pruner, Sharpness, SparsityTarget, Variant};

/// The `adasparse` template's parameters (`[model]` with `arch =
/// "adasparse"`): the pruned MLP's ([`AdaSparseMlpParams`], documented
/// there) and the towers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaSparseParams {
    pub units: Vec<usize>,
    pub activation: Activation,
    pub variant: Variant,
    pub domain_dim: usize,
    pub beta: f64,
    pub epsilon: f64,
    pub alpha_start: f64,
    pub alpha_growth: f64,
    pub alpha_max: f64,
    pub target_sparsity: f64,
    pub sparsity_tolerance: f64,
    pub sparsity_weight: f64,
    /// Hidden layers of each task's tower (may be empty: a linear head).
    pub tower_units: Vec<usize>,
}

impl Default for AdaSparseParams {
    fn default() -> Self {
        Self::from_parts(AdaSparseMlpParams::default(), Vec::new())
    }
}

impl AdaSparseParams {
    fn from_parts(m: AdaSparseMlpParams, tower_units: Vec<usize>) -> Self {
        Self {
            units: m.units,
            activation: m.activation,
            variant: m.variant,
            domain_dim: m.domain_dim,
            beta: m.beta,
            epsilon: m.epsilon,
            alpha_start: m.alpha_start,
            alpha_growth: m.alpha_growth,
            alpha_max: m.alpha_max,
            target_sparsity: m.target_sparsity,
            sparsity_tolerance: m.sparsity_tolerance,
            sparsity_weight: m.sparsity_weight,
            tower_units,
        }
    }

    /// The pruned MLP's parameters.
    pub fn mlp(&self) -> AdaSparseMlpParams {
        AdaSparseMlpParams {
            units: self.units.clone(),
            activation: self.activation,
            variant: self.variant,
            domain_dim: self.domain_dim,
            beta: self.beta,
            epsilon: self.epsilon,
            alpha_start: self.alpha_start,
            alpha_growth: self.alpha_growth,
            alpha_max: self.alpha_max,
            target_sparsity: self.target_sparsity,
            sparsity_tolerance: self.sparsity_tolerance,
            sparsity_weight: self.sparsity_weight,
        }
    }
}

pub struct AdaSparse;

impl Template for AdaSparse {
    const NAME: &'static str = "adasparse";
    const SUMMARY: &'static str =
        "AdaSparse (CIKM'22): shared MLP pruned per domain by neuron-wise factors from a domain-aware pruner";
    type Params = AdaSparseParams;
    fn expand(&self, p: &AdaSparseParams, env: &GraphEnv) -> Result<GraphSpec> {
        if env.domains == 0 {
            return Err(Error::GraphWide(
                "architecture `adasparse` is a multi-domain model: it needs a domain id per row, and this data \
                 has no domains (use a source with a domain column, e.g. `multi-domain-synthetic`)"
                    .into(),
            ));
        }
        let mut nodes = vec![NodeSpec::of("adasparse", &AdaSparseMlpKind, &p.mlp()).input(INPUT)];
        nodes.extend(towers(&env.tasks, &p.tower_units, |_| "adasparse".to_string()));
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(AdaSparse);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
