//! `partitioned-norm`: STAR's partitioned normalization (PN).
//!
//! Training: for the rows of domain `p` in the batch, with their mean `mu_p`
//! and biased variance `var_p` (per feature),
//! `z' = (gamma * gamma_p) * (z - mu_p) / sqrt(var_p + eps) + (beta + beta_p)`.
//! Evaluation: the per-domain moving averages `E_p`, `Var_p` replace the batch
//! statistics. The moving averages are saved buffers (not trained), updated in
//! every training forward, `E_p <- (1 - m) E_p + m mu_p` (likewise `Var_p`),
//! only for the domains with batch statistics in the batch. Written from
//! basic differentiable ops (or the fused `norm_op`): candle's fused
//! `layer_norm` has no backward, and its `BatchNorm` divides by `N - 1`.
//!
//! **Groups under [`MIN_GROUP_ROWS`] rows.** A domain with a single row in a
//! training batch has no batch statistics: its mean is the row itself and
//! its variance 0, so the row would normalise to exactly 0 (the output is
//! `beta + beta_p` whatever the input, and no gradient reaches the input),
//! and folding `var = 0` into `Var_p` drags the evaluation statistics
//! towards 0, so that evaluation later divides by almost `sqrt(eps)`
//! (STAR trained at batch size 1 gave a test logloss of 2.2 against 0.64 at
//! batch size 2). Such a group is therefore normalised with its domain's
//! moving statistics, exactly as in evaluation, `z' = (gamma * gamma_p) *
//! (z - E_p) / sqrt(Var_p + eps) + (beta + beta_p)` (`E_p`, `Var_p` constants:
//! gradients reach the input and the four scale/shift parameters), and the
//! moving statistics are left untouched. Before a domain's first group of
//! two or more rows `E_p = 0`, `Var_p = 1`: the row passes through almost
//! unnormalised. A whole batch of one row therefore never updates the
//! statistics, which is why the runner refuses `[train] batch_size = 1` for
//! a model with this layer ([`crate::batch_statistics_nodes`]).

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};

use crate::norm_op;
use mtrec_core::groups::{domains_of, DomainGroups};

fn default_momentum() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionedNormParams {
    /// Weight `m` of the current batch in the moving averages, in (0, 1].
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Added to the variance, > 0.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

impl Default for PartitionedNormParams {
    fn default() -> Self {
        Self {
            momentum: default_momentum(),
            eps: default_eps(),
        }
    }
}

/// The fewest rows of a domain in a training batch that give batch
/// statistics; smaller groups are normalised with the moving statistics and
/// leave them untouched (see the module documentation).
pub const MIN_GROUP_ROWS: usize = 2;

/// The built PN layer. Parameter names (under the node id): `gamma`, `beta`
/// `[d]`; `domain_gamma`, `domain_beta` `[D, d]`; buffers `moving_mean`,
/// `moving_var` `[D, d]` (start at 0 and 1).
pub struct PartitionedNorm {
    width: usize,
    domains: usize,
    momentum: f64,
    eps: f64,
    gamma: Tensor,
    beta: Tensor,
    domain_gamma: Tensor,
    domain_beta: Tensor,
    moving_mean: Var,
    moving_var: Var,
}

impl PartitionedNorm {
    pub fn new(pb: &ParamBuilder, width: usize, domains: usize, momentum: f64, eps: f64) -> Result<Self> {
        Ok(Self {
            width,
            domains,
            momentum,
            eps,
            gamma: pb.get("gamma", &[width], Init::Ones)?,
            beta: pb.get("beta", &[width], Init::Zeros)?,
            domain_gamma: pb.get("domain_gamma", &[domains, width], Init::Ones)?,
            domain_beta: pb.get("domain_beta", &[domains, width], Init::Zeros)?,
            moving_mean: pb.buffer("moving_mean", &[domains, width], Init::Zeros)?,
            moving_var: pb.buffer("moving_var", &[domains, width], Init::Ones)?,
        })
    }

    /// One domain's rows on the fused path: in training one custom op
    /// (`norm_op::NormTrain`, hand-written backward) and the batch
    /// statistics for the moving averages; in evaluation `x * a + c` with
    /// `a = g / sqrt(Var_p + eps)`, `c = b - E_p * a` folded per column.
    fn forward_fused(
        &self,
        xp: &Tensor,
        p: usize,
        train: bool,
        stats: &mut Vec<(usize, Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let g = self.gamma.mul(&self.domain_gamma.get(p)?)?;
        let b = self.beta.add(&self.domain_beta.get(p)?)?;
        let xp = xp.contiguous()?;
        if train && xp.dim(0)? >= MIN_GROUP_ROWS {
            let w = self.width;
            let host: Vec<f32> = xp.flatten_all()?.to_vec1()?;
            let (op, mean, var) = norm_op::NormTrain::new(&host, w, self.eps);
            let device = xp.device();
            stats.push((
                p,
                Tensor::from_vec(mean, (1, w), device)?,
                Tensor::from_vec(var, (1, w), device)?,
            ));
            return Ok(xp.apply_op3(&g.contiguous()?, &b.contiguous()?, op)?);
        }
        let mean = self.moving_mean.as_tensor().get(p)?.detach();
        let var = self.moving_var.as_tensor().get(p)?.detach();
        let a = g.div(&(var + self.eps)?.sqrt()?)?;
        let c = b.sub(&mean.mul(&a)?)?;
        Ok(xp.broadcast_mul(&a.unsqueeze(0)?)?.broadcast_add(&c.unsqueeze(0)?)?)
    }

    /// Folds the batch statistics `(domain, mean [1, d], var [1, d])` of the
    /// domains that had them into the moving averages; other domains are
    /// untouched.
    fn update(&self, stats: &[(usize, Tensor, Tensor)]) -> Result<()> {
        let d = self.width;
        let m = self.momentum as f32;
        let mut mean: Vec<f32> = self.moving_mean.as_tensor().flatten_all()?.to_vec1()?;
        let mut var: Vec<f32> = self.moving_var.as_tensor().flatten_all()?.to_vec1()?;
        for (p, mu, v) in stats {
            let mu: Vec<f32> = mu.flatten_all()?.to_vec1()?;
            let v: Vec<f32> = v.flatten_all()?.to_vec1()?;
            for j in 0..d {
                let i = p * d + j;
                mean[i] = (1.0 - m) * mean[i] + m * mu[j];
                var[i] = (1.0 - m) * var[i] + m * v[j];
            }
        }
        let device = self.moving_mean.device();
        self.moving_mean
            .set(&Tensor::from_vec(mean, (self.domains, d), device)?)?;
        self.moving_var
            .set(&Tensor::from_vec(var, (self.domains, d), device)?)?;
        Ok(())
    }
}

impl Layer for PartitionedNorm {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let doms = domains_of(ctx, "partitioned-norm", self.domains)?;
        let groups = DomainGroups::new(doms)?;
        let gamma = self.gamma.unsqueeze(0)?;
        let beta = self.beta.unsqueeze(0)?;
        let mut stats = Vec::new();
        let fused = mtrec_core::ops::fused() && x.device().is_cpu() && x.dtype() == DType::F32;
        let out = groups.map(x, |p, xp| {
            if fused {
                return self.forward_fused(xp, p, ctx.train, &mut stats);
            }
            let (mean, var) = if ctx.train && xp.dim(0)? >= MIN_GROUP_ROWS {
                let mean = xp.mean_keepdim(0)?;
                // Biased (divide by n), as the paper's batch normalization.
                let var = xp.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
                stats.push((p, mean.detach(), var.detach()));
                (mean, var)
            } else {
                (
                    self.moving_mean.as_tensor().narrow(0, p, 1)?.detach(),
                    self.moving_var.as_tensor().narrow(0, p, 1)?.detach(),
                )
            };
            let z = xp.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            // Multiplicative gamma, additive beta (the paper's PN).
            let scale = gamma.mul(&self.domain_gamma.narrow(0, p, 1)?)?;
            let shift = beta.add(&self.domain_beta.narrow(0, p, 1)?)?;
            Ok(z.broadcast_mul(&scale)?.broadcast_add(&shift)?)
        })?;
        if ctx.train && !stats.is_empty() {
            self.update(&stats)?;
        }
        Ok(out)
    }
}

pub struct PartitionedNormKind;

impl Kind for PartitionedNormKind {
    type Params = PartitionedNormParams;
    fn name(&self) -> &'static str {
        "partitioned-norm"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "STAR partitioned normalization: per-domain batch statistics (moving averages in eval), gamma*gamma_p, beta+beta_p"
    }
    fn check(&self, p: &PartitionedNormParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err(
                "`partitioned-norm` normalizes per domain, but the data has no domains (no domain column)".into(),
            );
        }
        if !(p.momentum > 0.0 && p.momentum <= 1.0) {
            return Err(format!("`momentum` = {} must be in (0, 1]", p.momentum));
        }
        if !(p.eps.is_finite() && p.eps > 0.0) {
            return Err(format!("`eps` = {} must be a finite number > 0", p.eps));
        }
        Ok(Port::Dense {
            width: io.inputs.first().map_or(0, |p| p.width()),
        })
    }
    fn build(&self, p: &PartitionedNormParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let width = io.inputs.first().map_or(0, |p| p.width());
        Ok(Component::Layer(Box::new(PartitionedNorm::new(
            pb,
            width,
            env.domains,
            p.momentum,
            p.eps,
        )?)))
    }
}

mtrec_core::register_kind!(PartitionedNormKind);
