//! Fusions of several dense inputs: concatenation, sum, product, and the three
//! combined (the seed note's choices for feeding PLE's next layer).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::component::{Component, Fusion, Port, Role};
use crate::error::Result;
use crate::graph::{GraphEnv, NodeIo};
use crate::inputs::ForwardCtx;
use crate::params::ParamBuilder;
use crate::protocol::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionOp {
    Concat,
    Sum,
    Product,
    /// `[concat, sum, product]` concatenated.
    ConcatSumProduct,
}

impl FusionOp {
    pub fn name(self) -> &'static str {
        match self {
            FusionOp::Concat => "concat",
            FusionOp::Sum => "sum",
            FusionOp::Product => "product",
            FusionOp::ConcatSumProduct => "concat-sum-product",
        }
    }

    /// Output width for the given input widths, or why they do not fit.
    pub fn out_width(self, widths: &[usize]) -> std::result::Result<usize, String> {
        let total: usize = widths.iter().sum();
        let same = widths.windows(2).all(|w| w[0] == w[1]);
        let w0 = widths.first().copied().unwrap_or(0);
        match self {
            FusionOp::Concat => Ok(total),
            _ if !same => Err(format!(
                "width mismatch: `{}` needs inputs of one width, got {widths:?}",
                self.name()
            )),
            FusionOp::Sum | FusionOp::Product => Ok(w0),
            FusionOp::ConcatSumProduct => Ok(total + 2 * w0),
        }
    }

    pub fn apply(self, xs: &[Tensor]) -> Result<Tensor> {
        let fold = |f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| -> Result<Tensor> {
            let mut acc = xs[0].clone();
            for x in &xs[1..] {
                acc = f(&acc, x)?;
            }
            Ok(acc)
        };
        Ok(match self {
            FusionOp::Concat => Tensor::cat(xs, 1)?,
            FusionOp::Sum => fold(|a, b| a + b)?,
            FusionOp::Product => fold(|a, b| a * b)?,
            FusionOp::ConcatSumProduct => {
                let parts = [Tensor::cat(xs, 1)?, fold(|a, b| a + b)?, fold(|a, b| a * b)?];
                Tensor::cat(&parts, 1)?
            }
        })
    }
}

/// The fusions take no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

struct Fused {
    op: FusionOp,
}

impl Fusion for Fused {
    fn forward(&self, xs: &[Tensor], _ctx: &ForwardCtx) -> Result<Tensor> {
        self.op.apply(xs)
    }
}

pub struct FusionKind(pub FusionOp);

impl Kind for FusionKind {
    type Params = NoParams;
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn role(&self) -> Role {
        Role::Fusion
    }
    fn summary(&self) -> &'static str {
        match self.0 {
            FusionOp::Concat => "concatenates its inputs",
            FusionOp::Sum => "sums inputs of one width",
            FusionOp::Product => "multiplies inputs of one width elementwise",
            FusionOp::ConcatSumProduct => "concatenation, sum and product of inputs of one width, side by side",
        }
    }
    fn check(&self, _p: &NoParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        let widths: Vec<usize> = io.inputs.iter().map(|p| p.width()).collect();
        Ok(Port::Dense {
            width: self.0.out_width(&widths)?,
        })
    }
    fn build(&self, _p: &NoParams, _io: &NodeIo, _env: &GraphEnv, _pb: &ParamBuilder) -> Result<Component> {
        Ok(Component::Fusion(Box::new(Fused { op: self.0 })))
    }
}

crate::register_kind!(FusionKind(FusionOp::Concat));
crate::register_kind!(FusionKind(FusionOp::Sum));
crate::register_kind!(FusionKind(FusionOp::Product));
crate::register_kind!(FusionKind(FusionOp::ConcatSumProduct));
