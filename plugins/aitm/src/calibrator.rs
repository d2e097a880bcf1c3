//! `funnel-calibrator`: AITM's behavioural expectation calibrator, a term of
//! the training objective over several towers' outputs.
//!
//! Reads the logits `a_1..a_T` of the funnel's tasks in funnel order (each
//! `[B, 1]`), `y_t = sigmoid(a_t)`, and adds to the objective
//! `alpha * mean_rows sum_(t>=2) max(y_t - y_(t-1), 0)`: a later step of the
//! funnel should not be predicted more likely than the step before it. The
//! gradient reaches both towers of each pair (nothing is detached, as in
//! the authors' code). The term is added only in training passes that
//! collect penalties, and not at all when `alpha = 0`. The node's output,
//! which nothing needs to read, is the per-row violation
//! `sum_(t>=2) max(y_t - y_(t-1), 0)` (`[B, 1]`, not weighted).

use candle_core::Tensor;
use mtrec_core::{Component, ForwardCtx, Fusion, GraphEnv, Kind, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

/// The paper's calibrator weight (the authors' code: `--weight 0.6`).
pub const PAPER_ALPHA: f64 = 0.6;

/// `funnel-calibrator` parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibratorParams {
    /// The term's weight `alpha`, finite and >= 0.
    pub alpha: f64,
}

impl Default for CalibratorParams {
    fn default() -> Self {
        Self { alpha: PAPER_ALPHA }
    }
}

/// The name of the penalty term (in `ModelOutput::penalties`).
pub const PENALTY: &str = "funnel-calibrator";

struct Calibrator {
    alpha: f64,
}

/// Per row, `sum_(t>=2) max(sigmoid(a_t) - sigmoid(a_(t-1)), 0)` of logits
/// `[B, 1]` in funnel order: `[B, 1]`.
pub fn violation(logits: &[Tensor]) -> Result<Tensor> {
    let y = candle_nn::ops::sigmoid(&Tensor::cat(logits, 1)?)?;
    let t = y.dim(1)?;
    let later = y.narrow(1, 1, t - 1)?;
    let earlier = y.narrow(1, 0, t - 1)?;
    Ok((later - earlier)?.relu()?.sum_keepdim(1)?)
}

impl Fusion for Calibrator {
    fn forward(&self, xs: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let v = violation(xs)?;
        if self.alpha > 0.0 && ctx.train {
            ctx.add_penalty(PENALTY, (v.mean_all()? * self.alpha)?)?;
        }
        Ok(v)
    }
}

/// The `funnel-calibrator` component kind (a fusion that is an objective
/// term: it may feed no tower).
pub struct CalibratorKind;

impl Kind for CalibratorKind {
    type Params = CalibratorParams;
    fn name(&self) -> &'static str {
        "funnel-calibrator"
    }
    fn role(&self) -> Role {
        Role::Fusion
    }
    fn summary(&self) -> &'static str {
        "AITM's calibrator over binary towers' logits in funnel order: adds alpha * mean sum_t max(y_t - y_(t-1), 0) to the objective (alpha = 0.6)"
    }
    fn check(&self, p: &CalibratorParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        if !(p.alpha.is_finite() && p.alpha >= 0.0) {
            return Err(format!("`alpha` = {} must be a finite number >= 0", p.alpha));
        }
        if io.inputs.len() < 2 {
            return Err(format!(
                "`funnel-calibrator` reads the logits of at least two funnel steps, got {} input(s)",
                io.inputs.len()
            ));
        }
        if let Some(w) = io.inputs.iter().map(|p| p.width()).find(|&w| w != 1) {
            return Err(format!(
                "width mismatch: `funnel-calibrator` reads [B, 1] logits (towers), got width {w}"
            ));
        }
        Ok(Port::Dense { width: 1 })
    }
    fn build(&self, p: &CalibratorParams, _io: &NodeIo, _env: &GraphEnv, _pb: &ParamBuilder) -> Result<Component> {
        Ok(Component::Fusion(Box::new(Calibrator { alpha: p.alpha })))
    }
    fn objective_term(&self) -> bool {
        true
    }
}

mtrec_core::register_kind!(CalibratorKind);
