//! Each component kind's ONNX form: a node of the validated graph, with its
//! inputs already ONNX values, becomes ONNX ops over its weights.
//!
//! The mapping is by kind name: a kind this crate does not know (a
//! third-party plugin's, a kind added later) is an
//! [`ExportError::Unsupported`] naming the node and the kind, never a graph
//! that computes something else.

use mtrec_core::components::experts::MlpExpertsParams;
use mtrec_core::components::mlp::MlpParams;
use mtrec_core::components::tower::MlpTowerParams;
use mtrec_core::components::Activation;
use mtrec_core::protocol::parse_params;
use mtrec_core::NodeSpec;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::{Attr, Builder};
use crate::error::{ExportError, Result};
use crate::features::Features;
use crate::weights::Weights;

/// What the graph's nodes share while being written.
pub struct Ctx {
    pub b: Builder,
    pub w: Weights,
    pub features: Features,
    /// The domain-id graph input, where the model's data has domains.
    pub domain: Option<String>,
    /// The number of domains of the model's data (0: none).
    pub domains: usize,
}

/// A node's inputs as ONNX values.
pub struct NodeInputs {
    /// The dense inputs (a gate's selector), in order.
    pub inputs: Vec<String>,
    /// A gate's expert banks `[n, B, d]`, in order.
    pub experts: Vec<String>,
}

/// The node's parameters, typed (they parse: the graph was validated).
pub fn params<P: DeserializeOwned + Serialize + Default>(node: &NodeSpec) -> Result<P> {
    parse_params(&node.params).map_err(|e| ExportError::Params {
        node: node.id.clone(),
        kind: node.kind.clone(),
        message: e.to_string(),
    })
}

impl Ctx {
    /// The domain ids, or why a per-domain kind cannot be written without them.
    pub fn domain(&self, node: &NodeSpec) -> Result<String> {
        self.domain.clone().ok_or_else(|| ExportError::Unsupported {
            node: node.id.clone(),
            kind: node.kind.clone(),
            reason: "it selects weights by domain, and the model has no domains".into(),
        })
    }

    /// `x * scale[d] + shift[d]`: rows of the `[D, w]` initializers `scale`
    /// and `shift` gathered by each row's domain `d`.
    pub fn domain_affine(&mut self, x: &str, scale: &str, shift: &str, domain: &str) -> String {
        let scale = self.b.gather_rows(scale, domain);
        let shift = self.b.gather_rows(shift, domain);
        let scaled = self.b.op("Mul", &[x, &scale], vec![], "scaled");
        self.b.op("Add", &[&scaled, &shift], vec![], "shifted")
    }

    /// `act(x)`.
    pub fn activation(&mut self, x: &str, act: Activation) -> String {
        let op = match act {
            Activation::Identity => return x.to_string(),
            Activation::Relu => "Relu",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::Softmax => {
                return self.b.op("Softmax", &[x], vec![Attr::Int("axis", -1)], "softmax");
            }
        };
        self.b.op(op, &[x], vec![], op)
    }

    /// `act(x W + b)` with the weights `<prefix>.weight` (`[in, out]`, or a
    /// bank's `[n, in, out]`) and `<prefix>.bias` when the model has it.
    pub fn linear(&mut self, x: &str, prefix: &str, act: Activation) -> Result<String> {
        let w = self.w.use_weight(&mut self.b, &format!("{prefix}.weight"))?;
        let mut h = self.b.op("MatMul", &[x, &w], vec![], prefix);
        let bias = format!("{prefix}.bias");
        if self.w.has(&bias) {
            let bias = self.w.use_weight(&mut self.b, &bias)?;
            h = self.b.op("Add", &[&h, &bias], vec![], prefix);
        }
        Ok(self.activation(&h, act))
    }

    /// Layers `<prefix>.<i>` for `i < layers`, each followed by `act`.
    pub fn stack(&mut self, x: &str, prefix: &str, layers: usize, act: Activation) -> Result<String> {
        let mut h = x.to_string();
        for i in 0..layers {
            h = self.linear(&h, &format!("{prefix}.{i}"), act)?;
        }
        Ok(h)
    }

    /// `out[b] = sum_i w[b, i] * bank[i, b]` over the banks side by side.
    pub fn mix(&mut self, weights: &str, banks: &[String]) -> String {
        let bank = match banks {
            [one] => one.clone(),
            _ => {
                let refs: Vec<&str> = banks.iter().map(String::as_str).collect();
                self.b.op("Concat", &refs, vec![Attr::Int("axis", 0)], "banks")
            }
        };
        let wt = self
            .b
            .op("Transpose", &[weights], vec![Attr::Ints("perm", vec![1, 0])], "gate_t");
        let wt = self.b.unsqueeze(&wt, 2);
        let weighted = self.b.op("Mul", &[&bank, &wt], vec![], "weighted");
        self.b.reduce_sum(&weighted, 0)
    }

    /// The node's output value.
    pub fn node(&mut self, node: &NodeSpec, io: &NodeInputs) -> Result<String> {
        let id = node.id.as_str();
        let x = io.inputs.first().map(String::as_str).unwrap_or_default();
        match node.kind.as_str() {
            "mlp-experts" => {
                let p: MlpExpertsParams = params(node)?;
                // `[B, in] @ [n, in, out]` broadcasts to the bank `[n, B, out]`.
                self.stack(x, id, p.units.len(), p.activation)
            }
            "softmax-gate" => {
                let w = self.linear(x, id, Activation::Softmax)?;
                Ok(self.mix(&w, &io.experts))
            }
            "mlp" => {
                let p: MlpParams = params(node)?;
                self.stack(x, id, p.units.len(), p.activation)
            }
            "mlp-tower" => {
                let p: MlpTowerParams = params(node)?;
                let h = self.stack(x, &format!("{id}.hidden"), p.units.len(), p.activation)?;
                self.linear(&h, &format!("{id}.out"), Activation::Identity)
            }
            "concat" => Ok(self.concat(&io.inputs)),
            "sum" => Ok(self.fold("Add", &io.inputs)),
            "product" => Ok(self.fold("Mul", &io.inputs)),
            "concat-sum-product" => {
                let parts = [
                    self.concat(&io.inputs),
                    self.fold("Add", &io.inputs),
                    self.fold("Mul", &io.inputs),
                ];
                Ok(self.concat(&parts))
            }
            "partitioned-norm" | "star-fcn" | "star-tower" => crate::star::node(self, node, x),
            "sar-behaviour" | "scenario-transform" | "sar-experts" | "sar-gate" => crate::sar_net::node(self, node, io),
            "epnet" | "ppnet-gates" | "ppnet-tower" => crate::pepnet::node(self, node, x),
            "adasparse-mlp" => crate::adasparse::node(self, node, x),
            "ait" => crate::aitm::ait(self, node, &io.inputs),
            other => Err(ExportError::Unsupported {
                node: id.to_string(),
                kind: other.to_string(),
                reason: "mtrec-export has no ONNX form for this kind".into(),
            }),
        }
    }

    /// `xs` side by side (axis 1); one value as it is.
    pub fn concat(&mut self, xs: &[String]) -> String {
        if let [one] = xs {
            return one.clone();
        }
        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
        self.b.op("Concat", &refs, vec![Attr::Int("axis", 1)], "concat")
    }

    fn fold(&mut self, op: &str, xs: &[String]) -> String {
        let mut acc = xs[0].clone();
        for x in &xs[1..] {
            acc = self.b.op(op, &[&acc, x], vec![], op);
        }
        acc
    }
}
