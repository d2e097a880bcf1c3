//! AdaSparse's `adasparse-mlp` (`mtrec-adasparse`) as ONNX, in evaluation
//! mode. Per hidden layer `l`: `h = act(h W_l + b_l)`, the pruner's scores
//! `v = h W^pr_h + (E W^pr_e + b^pr)[d]` (the domain block computed over the
//! whole `[D, e]` embedding table and its rows gathered by the `domain`
//! input, as the plugin does), the factors `pi` of the variant, `h <- h *
//! pi`. The sharpness `alpha` is the saved buffer `<id>.alpha` (an
//! initializer), the value evaluation reads: what training reached, never
//! the schedule's start. Binarization keeps its sharpened sigmoid (no hard
//! threshold), Fusion's threshold is `beta sigmoid(alpha v) >= epsilon`, as
//! the plugin evaluates them; Scaling does not read `alpha`, so its buffer is
//! not written. The sparsity regulariser is training-only and absent.

use mtrec_adasparse::{AdaSparseMlpParams, Variant};
use mtrec_core::components::Activation;
use mtrec_core::NodeSpec;
use onnx_protobuf::tensor_proto::DataType;

use crate::builder::Attr;
use crate::error::Result;
use crate::kinds::{params, Ctx};

pub fn node(ctx: &mut Ctx, node: &NodeSpec, x: &str) -> Result<String> {
    let id = node.id.as_str();
    let p: AdaSparseMlpParams = params(node)?;
    let domain = ctx.domain(node)?;
    let table = ctx.w.use_weight(&mut ctx.b, &format!("{id}.domain_embedding"))?;
    let mut h = x.to_string();
    for l in 0..p.units.len() {
        h = ctx.linear(&h, &format!("{id}.layers.{l}"), p.activation)?;
        let pruner = format!("{id}.pruners.{l}");
        let per_domain = ctx.linear(&table, &format!("{pruner}.domain"), Activation::Identity)?;
        let own_w = ctx.w.use_weight(&mut ctx.b, &format!("{pruner}.hidden.weight"))?;
        let own = ctx.b.op("MatMul", &[&h, &own_w], vec![], "pruner_own");
        let dom = ctx.b.gather_rows(&per_domain, &domain);
        let v = ctx.b.op("Add", &[&own, &dom], vec![], "pruner_scores");
        let pi = factors(ctx, id, &v, &p)?;
        h = ctx.b.op("Mul", &[&h, &pi], vec![], "pruned");
    }
    Ok(h)
}

/// The factors `pi` of scores `v` by the variant (see `mtrec_adasparse::FactorRule`).
fn factors(ctx: &mut Ctx, id: &str, v: &str, p: &AdaSparseMlpParams) -> Result<String> {
    let sharpened = if p.variant.anneals() {
        let alpha = ctx.w.use_weight(&mut ctx.b, &format!("{id}.alpha"))?;
        ctx.b.op("Mul", &[v, &alpha], vec![], "sharpened")
    } else {
        v.to_string()
    };
    let keep = ctx.activation(&sharpened, Activation::Sigmoid);
    if p.variant == Variant::Binarization {
        return Ok(keep);
    }
    let beta = ctx.b.scalar("beta", p.beta as f32);
    let scaled = ctx.b.op("Mul", &[&keep, &beta], vec![], "scaled");
    if p.variant == Variant::Scaling {
        return Ok(scaled);
    }
    let epsilon = ctx.b.scalar("epsilon", p.epsilon as f32);
    let kept = ctx.b.op("GreaterOrEqual", &[&scaled, &epsilon], vec![], "kept");
    let kept = ctx
        .b
        .op("Cast", &[&kept], vec![Attr::Int("to", DataType::FLOAT as i64)], "kept");
    Ok(ctx.b.op("Mul", &[&scaled, &kept], vec![], "fused"))
}
