//! PEPNet's kinds (`mtrec-pepnet`) as ONNX, in evaluation mode (the
//! stop-gradients of the gates' inputs do nothing at inference):
//!
//! - a Gate NU: `gamma * sigmoid(ReLU(z W + b) W' + b')`;
//! - `epnet`: `x * GateNU([E(domain) ; domain_features ; x])`, the domain
//!   embedding a row of `<id>.domain_embedding` gathered by the `domain`
//!   input;
//! - `ppnet-gates`: `[x | GateNU_0(z) | .. | GateNU_L(z)]` with `z = [prior
//!   features ; x]`, one Gate NU per tower layer (`<id>.layer<l>`);
//! - `ppnet-tower`: from `H_0`, the first `W` columns of its input, every
//!   layer's input times its task's factors, sliced from that input where
//!   `mtrec_pepnet::Layout` places them. `W` is read off the tower's first
//!   weight (the layer that reads `H_0`).

use mtrec_core::components::Activation;
use mtrec_core::NodeSpec;
use mtrec_pepnet::{EpnetParams, Layout, PpnetGatesParams, PpnetTowerParams};

use crate::error::{ExportError, Result};
use crate::kinds::{params, Ctx};

pub fn node(ctx: &mut Ctx, node: &NodeSpec, x: &str) -> Result<String> {
    let id = node.id.as_str();
    match node.kind.as_str() {
        "epnet" => {
            let p: EpnetParams = params(node)?;
            let domain = ctx.domain(node)?;
            let table = ctx.w.use_weight(&mut ctx.b, &format!("{id}.domain_embedding"))?;
            let mut parts = vec![ctx.b.gather_rows(&table, &domain)];
            for f in &p.domain_features {
                parts.push(ctx.features.feature(&mut ctx.b, &mut ctx.w, f)?);
            }
            parts.push(x.to_string());
            let z = ctx.concat(&parts);
            let delta = gate_nu(ctx, &z, &format!("{id}.gate"), p.gamma)?;
            Ok(ctx.b.op("Mul", &[x, &delta], vec![], "epnet"))
        }
        "ppnet-gates" => {
            let p: PpnetGatesParams = params(node)?;
            let mut parts = Vec::with_capacity(p.prior.len() + 1);
            for f in &p.prior {
                parts.push(ctx.features.feature(&mut ctx.b, &mut ctx.w, f)?);
            }
            parts.push(x.to_string());
            let z = ctx.concat(&parts);
            let mut out = vec![x.to_string()];
            // One Gate NU per tower layer, the output layer's included.
            for l in 0..=p.units.len() {
                out.push(gate_nu(ctx, &z, &format!("{id}.layer{l}"), p.gamma)?);
            }
            Ok(ctx.concat(&out))
        }
        "ppnet-tower" => {
            let p: PpnetTowerParams = params(node)?;
            let first = if p.units.is_empty() {
                format!("{id}.out.weight")
            } else {
                format!("{id}.hidden.0.weight")
            };
            let input = ctx.w.get(&first)?.dims()[0];
            let layout = Layout::new(input, &p.units, p.tasks);
            let mut h = ctx.b.narrow(x, 1, 0, layout.input());
            for l in 0..=p.units.len() {
                let (offset, len) = layout.factors(l, p.slot);
                let delta = ctx.b.narrow(x, 1, offset, len);
                let scaled = ctx.b.op("Mul", &[&h, &delta], vec![], "personalised");
                h = if l < p.units.len() {
                    ctx.linear(&scaled, &format!("{id}.hidden.{l}"), p.activation)?
                } else {
                    ctx.linear(&scaled, &format!("{id}.out"), Activation::Identity)?
                };
            }
            Ok(h)
        }
        other => Err(ExportError::Unsupported {
            node: id.to_string(),
            kind: other.to_string(),
            reason: "not a PEPNet kind".into(),
        }),
    }
}

/// A Gate NU `<prefix>.{hidden,out}`: `gamma * sigmoid(ReLU(z W + b) W' + b')`.
fn gate_nu(ctx: &mut Ctx, z: &str, prefix: &str, gamma: f64) -> Result<String> {
    let h = ctx.linear(z, &format!("{prefix}.hidden"), Activation::Relu)?;
    let s = ctx.linear(&h, &format!("{prefix}.out"), Activation::Sigmoid)?;
    let gamma = ctx.b.scalar("gamma", gamma as f32);
    Ok(ctx.b.op("Mul", &[&s, &gamma], vec![], "gate_nu"))
}
