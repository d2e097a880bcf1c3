//! STAR's kinds (`mtrec-star`) as ONNX. Each row's domain selects its
//! weights with a Gather over per-domain tensors stacked by domain, computed
//! at export time from the trained weights exactly as the plugin computes
//! them per domain: star layers' `W * W_p` and `b + b_p` (`[D, in, out]`,
//! `[D, out]`), the partitioned norm's evaluation-time scale
//! `a_p = gamma * gamma_p / sqrt(Var_p + eps)` and shift
//! `c_p = beta + beta_p - E_p a_p` (`[D, w]`). The auxiliary network of a
//! star tower reads only the domain: its embedding is gathered per row and
//! run through its layers.

use candle_core::Tensor;
use mtrec_core::components::Activation;
use mtrec_core::NodeSpec;
use mtrec_star::{PartitionedNormParams, StarFcnParams, StarTowerParams};

use crate::error::{ExportError, Result};
use crate::kinds::{params, Ctx};

pub fn node(ctx: &mut Ctx, node: &NodeSpec, x: &str) -> Result<String> {
    let id = node.id.as_str();
    let domain = ctx.domain(node)?;
    match node.kind.as_str() {
        "partitioned-norm" => {
            let p: PartitionedNormParams = params(node)?;
            let (a, c) = norm_affine(ctx, id, p.eps)?;
            let a = ctx.w.derived(&mut ctx.b, &format!("{id}.eval_scale"), &a)?;
            let c = ctx.w.derived(&mut ctx.b, &format!("{id}.eval_shift"), &c)?;
            Ok(ctx.domain_affine(x, &a, &c, &domain))
        }
        "star-fcn" => {
            let p: StarFcnParams = params(node)?;
            star_stack(ctx, x, id, p.units.len(), p.activation, &domain)
        }
        "star-tower" => {
            let p: StarTowerParams = params(node)?;
            let h = star_stack(ctx, x, &format!("{id}.hidden"), p.units.len(), p.activation, &domain)?;
            let s_m = star_linear(ctx, &h, &format!("{id}.out"), Activation::Identity, &domain)?;
            if !p.aux {
                return Ok(s_m);
            }
            let table = ctx.w.use_weight(&mut ctx.b, &format!("{id}.aux.embedding"))?;
            let e = ctx.b.gather_rows(&table, &domain);
            let h = ctx.stack(&e, &format!("{id}.aux.hidden"), p.aux_units.len(), Activation::Relu)?;
            let s_a = ctx.linear(&h, &format!("{id}.aux.out"), Activation::Identity)?;
            Ok(ctx.b.op("Add", &[&s_m, &s_a], vec![], "star_logit"))
        }
        other => Err(ExportError::Unsupported {
            node: id.to_string(),
            kind: other.to_string(),
            reason: "not a STAR kind".into(),
        }),
    }
}

/// The norm's per-domain evaluation scale and shift `[D, w]`.
fn norm_affine(ctx: &Ctx, id: &str, eps: f64) -> Result<(Tensor, Tensor)> {
    let w = |n: &str| ctx.w.get(&format!("{id}.{n}"));
    let gamma = w("domain_gamma")?.broadcast_mul(w("gamma")?)?;
    let beta = w("domain_beta")?.broadcast_add(w("beta")?)?;
    let a = gamma.div(&(w("moving_var")? + eps)?.sqrt()?)?;
    let c = beta.sub(&w("moving_mean")?.mul(&a)?)?;
    Ok((a, c))
}

fn star_stack(ctx: &mut Ctx, x: &str, prefix: &str, layers: usize, act: Activation, domain: &str) -> Result<String> {
    let mut h = x.to_string();
    for i in 0..layers {
        h = star_linear(ctx, &h, &format!("{prefix}.{i}"), act, domain)?;
    }
    Ok(h)
}

/// `act(x (W * W_p) + b + b_p)` for each row's domain `p`.
fn star_linear(ctx: &mut Ctx, x: &str, prefix: &str, act: Activation, domain: &str) -> Result<String> {
    let w = |n: &str| ctx.w.get(&format!("{prefix}.{n}"));
    let weights = w("domain_weight")?.broadcast_mul(w("weight")?)?;
    let biases = w("domain_bias")?.broadcast_add(w("bias")?)?;
    let weights = ctx
        .w
        .derived(&mut ctx.b, &format!("{prefix}.domain_effective_weight"), &weights)?;
    let biases = ctx
        .w
        .derived(&mut ctx.b, &format!("{prefix}.domain_effective_bias"), &biases)?;
    let row_w = ctx.b.gather_rows(&weights, domain);
    let row_b = ctx.b.gather_rows(&biases, domain);
    let x3 = ctx.b.unsqueeze(x, 1);
    let h = ctx.b.op("MatMul", &[&x3, &row_w], vec![], prefix);
    let h = ctx.b.squeeze(&h, 1);
    let h = ctx.b.op("Add", &[&h, &row_b], vec![], prefix);
    Ok(ctx.activation(&h, act))
}
