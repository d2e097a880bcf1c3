//! AITM's kinds (`mtrec-aitm`) as ONNX.
//!
//! - `ait`: the inputs `u_1..u_n` (`[B, d]` each) stacked to `[B, n, d]`,
//!   values `h1(u)` `[B, n, k]`, scores `<h2(u), h3(u)> / sqrt(k)` `[B, n]`,
//!   softmax over `n`, and the weighted sum of the values `[B, k]`; `k` is
//!   read off `h1`'s weight.
//! - `funnel-calibrator` is an objective term (a training penalty over the
//!   towers' logits that feeds no tower): it has nothing to export, and the
//!   exporter skips every objective-term node (`Kind::objective_term`).

use mtrec_core::components::Activation;
use mtrec_core::NodeSpec;

use crate::builder::Attr;
use crate::error::Result;
use crate::kinds::Ctx;

pub fn ait(ctx: &mut Ctx, node: &NodeSpec, inputs: &[String]) -> Result<String> {
    let id = node.id.as_str();
    let k = ctx.w.get(&format!("{id}.h1.weight"))?.dims()[1];
    let stacked: Vec<String> = inputs.iter().map(|u| ctx.b.unsqueeze(u, 1)).collect();
    let refs: Vec<&str> = stacked.iter().map(String::as_str).collect();
    let u = ctx.b.op("Concat", &refs, vec![Attr::Int("axis", 1)], "ait_inputs");
    // `[B, n, d] @ [d, k]` broadcasts to `[B, n, k]`.
    let value = ctx.linear(&u, &format!("{id}.h1"), Activation::Identity)?;
    let q = ctx.linear(&u, &format!("{id}.h2"), Activation::Identity)?;
    let r = ctx.linear(&u, &format!("{id}.h3"), Activation::Identity)?;
    let qr = ctx.b.op("Mul", &[&q, &r], vec![], "ait_products");
    let score = ctx.b.reduce_sum(&qr, 2);
    let scale = ctx.b.scalar("inv_sqrt_k", (1.0 / (k as f64).sqrt()) as f32);
    let score = ctx.b.op("Mul", &[&score, &scale], vec![], "ait_scores");
    let w = ctx.activation(&score, Activation::Softmax);
    let w = ctx.b.unsqueeze(&w, 2);
    let weighted = ctx.b.op("Mul", &[&value, &w], vec![], "ait_weighted");
    Ok(ctx.b.reduce_sum(&weighted, 1))
}
