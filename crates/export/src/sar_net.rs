//! SAR-Net's kinds (`mtrec-sar-net`) as ONNX, in evaluation mode: the
//! debias (bias) networks run only in training and are not exported.
//!
//! - `sar-behaviour`: the two scaled dot-product attentions over the
//!   behaviour sequence, `softmax(s1 + s2 - 1e9 (1 - m)) * m` with `m` the
//!   product of the two sequences' masks, the interest vector appended;
//! - `scenario-transform`: `x * w_s + b_s`, rows of `[D, w]` gathered per row;
//! - `sar-experts`: shared experts are an `mlp-experts` bank; scenario
//!   experts' weights are stacked by scenario (`[D, n, in, out]`, written at
//!   export time from `<id>.scenario<s>.main.*`) and gathered per row, so a
//!   row's bank slot `k` is expert `k` of its scenario;
//! - `sar-gate`: `softmax([x; e_s] W + b)` with `e_s` gathered per row, then
//!   the banks mixed as the softmax gate mixes them.

use candle_core::Tensor;
use mtrec_core::components::Activation;
use mtrec_core::NodeSpec;
use mtrec_sar_net::{BehaviourParams, DebiasExpertsParams};

use crate::builder::Attr;
use crate::error::{ExportError, Result};
use crate::kinds::{params, Ctx, NodeInputs};

/// What `sar-behaviour` subtracts from the scores of padded positions.
const MASKED: f32 = 1e9;

pub fn node(ctx: &mut Ctx, node: &NodeSpec, io: &NodeInputs) -> Result<String> {
    let id = node.id.as_str();
    let x = io.inputs.first().map(String::as_str).unwrap_or_default();
    match node.kind.as_str() {
        "sar-behaviour" => behaviour(ctx, node, x),
        "scenario-transform" => {
            let domain = ctx.domain(node)?;
            let scale = ctx.w.use_weight(&mut ctx.b, &format!("{id}.scale"))?;
            let shift = ctx.w.use_weight(&mut ctx.b, &format!("{id}.shift"))?;
            Ok(ctx.domain_affine(x, &scale, &shift, &domain))
        }
        "sar-experts" => {
            let p: DebiasExpertsParams = params(node)?;
            if p.scenario_specific {
                scenario_experts(ctx, node, x, &p)
            } else {
                ctx.stack(x, &format!("{id}.main"), p.units.len(), p.activation)
            }
        }
        "sar-gate" => {
            let domain = ctx.domain(node)?;
            let table = ctx.w.use_weight(&mut ctx.b, &format!("{id}.scenario_embedding"))?;
            let e = ctx.b.gather_rows(&table, &domain);
            let z = ctx.b.op("Concat", &[x, &e], vec![Attr::Int("axis", 1)], "gate_input");
            let w = ctx.linear(&z, id, Activation::Softmax)?;
            Ok(ctx.mix(&w, &io.experts))
        }
        other => Err(ExportError::Unsupported {
            node: id.to_string(),
            kind: other.to_string(),
            reason: "not a SAR-Net kind".into(),
        }),
    }
}

/// Per row, the bank of its scenario's experts: `[n, B, out]`.
fn scenario_experts(ctx: &mut Ctx, node: &NodeSpec, x: &str, p: &DebiasExpertsParams) -> Result<String> {
    let id = node.id.as_str();
    let domain = ctx.domain(node)?;
    let domains = ctx.domains;
    // `[B, 1, 1, in]` against per-row `[B, n, in, out]` weights: `[B, n, 1, out]`.
    let mut h = ctx.b.unsqueeze(x, 1);
    h = ctx.b.unsqueeze(&h, 1);
    for layer in 0..p.units.len() {
        let mut stacked = Vec::with_capacity(2);
        for part in ["weight", "bias"] {
            let per: Vec<Tensor> = (0..domains)
                .map(|s| ctx.w.get(&format!("{id}.scenario{s}.main.{layer}.{part}")).cloned())
                .collect::<Result<_>>()?;
            let t = Tensor::stack(&per, 0)?;
            let name = format!("{id}.main.{layer}.{part}_by_scenario");
            stacked.push(ctx.w.derived(&mut ctx.b, &name, &t)?);
        }
        let w = ctx.b.gather_rows(&stacked[0], &domain);
        let bias = ctx.b.gather_rows(&stacked[1], &domain);
        let m = ctx.b.op("MatMul", &[&h, &w], vec![], "scenario_experts");
        let m = ctx.b.op("Add", &[&m, &bias], vec![], "scenario_experts");
        h = ctx.activation(&m, p.activation);
    }
    let h = ctx.b.squeeze(&h, 2);
    Ok(ctx
        .b
        .op("Transpose", &[&h], vec![Attr::Ints("perm", vec![1, 0, 2])], "bank"))
}

/// `keys [B, L, d] . q [B, d] / sqrt(d)`: `[B, L]`.
fn scores(ctx: &mut Ctx, keys: &str, q: &str, d: usize) -> String {
    let q = ctx.b.unsqueeze(q, 2);
    let s = ctx.b.op("MatMul", &[keys, &q], vec![], "scores");
    let s = ctx.b.squeeze(&s, 2);
    let scale = ctx.b.scalar("inv_sqrt_d", (1.0 / (d as f64).sqrt()) as f32);
    ctx.b.op("Mul", &[&s, &scale], vec![], "scores")
}

fn behaviour(ctx: &mut Ctx, node: &NodeSpec, x: &str) -> Result<String> {
    let id = node.id.as_str();
    let p: BehaviourParams = params(node)?;
    let spec = ctx.features.spec().clone();
    let width = |seq: &str| spec.sequence(seq).map(|q| q.dim);
    let (d_item, d_scen) = match (width(&p.items), width(&p.scenarios)) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(ExportError::Params {
                node: id.into(),
                kind: node.kind.clone(),
                message: format!("`{}` or `{}` is no sequence feature", p.items, p.scenarios),
            })
        }
    };
    let (items, item_mask) = ctx.features.sequence(&mut ctx.b, &mut ctx.w, &p.items)?;
    let (scen, scen_mask) = ctx.features.sequence(&mut ctx.b, &mut ctx.w, &p.scenarios)?;
    let target = ctx.features.feature(&mut ctx.b, &mut ctx.w, &p.target)?;
    let current = match &p.scenario_field {
        Some(f) => ctx.features.feature(&mut ctx.b, &mut ctx.w, f)?,
        None => {
            let domain = ctx.domain(node)?;
            let table = ctx.w.use_weight(&mut ctx.b, &format!("{id}.scenario_embedding"))?;
            ctx.b.gather_rows(&table, &domain)
        }
    };
    let wi = ctx.w.use_weight(&mut ctx.b, &format!("{id}.item_query"))?;
    let q1 = ctx.b.op("MatMul", &[&target, &wi], vec![], "item_query");
    let wq = ctx.w.use_weight(&mut ctx.b, &format!("{id}.scenario_query"))?;
    let q2 = ctx.b.op("MatMul", &[&current, &wq], vec![], "scenario_query");
    let s1 = scores(ctx, &items, &q1, d_item);
    let s2 = scores(ctx, &scen, &q2, d_scen);
    let mask = ctx.b.op("Mul", &[&item_mask, &scen_mask], vec![], "mask");
    let one = ctx.b.scalar("one", 1.0);
    let big = ctx.b.scalar("masked", MASKED);
    let padding = ctx.b.op("Sub", &[&one, &mask], vec![], "padding");
    let penalty = ctx.b.op("Mul", &[&padding, &big], vec![], "penalty");
    let s = ctx.b.op("Add", &[&s1, &s2], vec![], "scores");
    let logits = ctx.b.op("Sub", &[&s, &penalty], vec![], "logits");
    let a = ctx.activation(&logits, Activation::Softmax);
    let a = ctx.b.op("Mul", &[&a, &mask], vec![], "attention");
    let a = ctx.b.unsqueeze(&a, 1);
    let interest = ctx.b.op("MatMul", &[&a, &items], vec![], "interest");
    let interest = ctx.b.squeeze(&interest, 1);
    Ok(ctx
        .b
        .op("Concat", &[x, &interest], vec![Attr::Int("axis", 1)], "with_interest"))
}
