//! ESMM (Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
//! Estimating Post-Click Conversion Rate", SIGIR 2018) as a third-party mtrec
//! architecture crate: it lives outside `crates/` and `plugins/` and uses only
//! `mtrec-core`'s public API.
//!
//! # The model
//!
//! Post-click conversion rate (pCVR) models trained on clicked rows only
//! suffer from sample selection bias (they are served on every impression)
//! and data sparsity. ESMM trains over the *entire space* of impressions:
//!
//! - a CTR network gives `pCTR = sigmoid(a)`,
//! - a CVR network gives `pCVR = sigmoid(b)`,
//! - `pCTCVR = pCTR x pCVR`;
//!
//! the loss is the CTR loss (label: click) on every row plus the CTCVR loss
//! (label: click AND conversion) on every row. The CVR network receives no
//! direct loss: it learns only through the product. Both networks read the
//! same feature embeddings (in mtrec the model's `input` node: one embedding
//! table per width, shared by every node that reads `input`).
//!
//! # In mtrec terms
//!
//! Tasks `ctr` and `ctcvr` (both binary, masks all ones: entire space); the
//! `esmm` template expands to
//!
//! ```text
//! input -> tower-ctr (mlp-tower, task ctr)          -> a   (pCTR logit)
//! input -> cvr-hidden (mlp) -> cvr (mlp, [1], linear) -> b   (pCVR logit)
//! concat [tower-ctr, cvr] -> tower-ctcvr (esmm-ctcvr, task ctcvr)
//! ```
//!
//! A tower's output may be read by other nodes, so the CTR tower is both the
//! `ctr` task's output and one input of the product. The crate registers two
//! component kinds:
//!
//! - `esmm-ctcvr` (tower, no weights): reads `[B, 2]` = `[a, b]` and outputs
//!   `logit(sigmoid(a) sigmoid(b))`, computed stably as
//!   `-logsumexp(-a, -b, -a-b)` (since `1/(p_a p_b) - 1 = e^-a + e^-b + e^-(a+b)`),
//!   so the stable BCE of the core applies to the product probability;
//! - `logit` (tower, no weights): passes a `[B, 1]` logit through as a task's
//!   output (e.g. to report pCVR as a task; the tests use it).
//!
//! # Linking
//!
//! Registration is by `mtrec_core::register_template!` / `register_kind!`
//! (inventory underneath). A binary must reference the crate
//! for the linker to keep it: call [`link`] (the `mtrec` runner does so when
//! built with its default feature `esmm`).

use candle_core::{DType, Tensor, D};
use mtrec_core::components::fusion::{FusionKind, FusionOp, NoParams};
use mtrec_core::components::mlp::{MlpKind, MlpParams};
use mtrec_core::components::tower::{MlpTowerKind, MlpTowerParams};
use mtrec_core::components::Activation;
use mtrec_core::{
    Component, Error, ForwardCtx, GraphEnv, GraphSpec, Kind, NodeIo, NodeSpec, ParamBuilder, Port, Result, Role,
    TaskKind, Template, Tower, INPUT,
};
use serde::{Deserialize, Serialize};

/// `logit(sigmoid(a) * sigmoid(b))` for logits `a`, `b` of one shape, stable
/// for any magnitude: `-logsumexp(-a, -b, -(a + b))`.
pub fn product_logit(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let na = a.neg()?;
    let nb = b.neg()?;
    let nab = (&na + &nb)?;
    let stacked = Tensor::stack(&[&na, &nb, &nab], D::Minus1)?;
    // The max is a constant shift of logsumexp: its gradient is not needed.
    let m = stacked.max_keepdim(D::Minus1)?.detach();
    let lse = (stacked.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?;
    Ok(lse.squeeze(D::Minus1)?.neg()?)
}

struct CtcvrTower;

impl Tower for CtcvrTower {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        let a = x.narrow(1, 0, 1)?;
        let b = x.narrow(1, 1, 1)?;
        product_logit(&a, &b)
    }
}

/// A weightless head reading a `[B, width]` input: checks the width.
fn head_of_width(kind: &str, width: usize, io: &NodeIo, what: &str) -> std::result::Result<Port, String> {
    let w = io.inputs.first().map_or(0, |p| p.width());
    if w != width {
        return Err(format!(
            "width mismatch: `{kind}` reads [B, {width}] ({what}), got width {w}"
        ));
    }
    Ok(Port::Dense { width: 1 })
}

/// `esmm-ctcvr`: the pCTCVR head (see the crate doc).
pub struct CtcvrKind;

impl Kind for CtcvrKind {
    type Params = NoParams;
    fn name(&self) -> &'static str {
        "esmm-ctcvr"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "ESMM head: reads [pCTR logit, pCVR logit] ([B, 2]), outputs logit(pCTR x pCVR); no weights"
    }
    fn check(&self, _p: &NoParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        head_of_width(self.name(), 2, io, "the CTR and CVR logits, e.g. a `concat` of both")
    }
    fn build(&self, _p: &NoParams, _io: &NodeIo, _env: &GraphEnv, _pb: &ParamBuilder) -> Result<Component> {
        Ok(Component::Tower(Box::new(CtcvrTower)))
    }
}

struct LogitTower;

impl Tower for LogitTower {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        Ok(x.to_dtype(DType::F32)?)
    }
}

/// `logit`: a task output that is a `[B, 1]` logit computed elsewhere.
pub struct LogitKind;

impl Kind for LogitKind {
    type Params = NoParams;
    fn name(&self) -> &'static str {
        "logit"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "passes a [B, 1] logit through as a task's output; no weights"
    }
    fn check(&self, _p: &NoParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        head_of_width(self.name(), 1, io, "a logit")
    }
    fn build(&self, _p: &NoParams, _io: &NodeIo, _env: &GraphEnv, _pb: &ParamBuilder) -> Result<Component> {
        Ok(Component::Tower(Box::new(LogitTower)))
    }
}

/// The `esmm` template's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EsmmParams {
    /// Hidden layers of the CTR network (then a linear map to its logit).
    pub ctr_units: Vec<usize>,
    /// Hidden layers of the CVR network (then a linear map to its logit).
    pub cvr_units: Vec<usize>,
    /// The task whose label is click (loss on every row).
    pub ctr_task: String,
    /// The task whose label is click AND conversion (loss on every row).
    pub ctcvr_task: String,
}

impl Default for EsmmParams {
    fn default() -> Self {
        // The paper's towers are 360-200-80-2; scaled down for small data.
        Self {
            ctr_units: vec![64, 32],
            cvr_units: vec![64, 32],
            ctr_task: "ctr".into(),
            ctcvr_task: "ctcvr".into(),
        }
    }
}

pub struct Esmm;

impl Template for Esmm {
    const NAME: &'static str = "esmm";
    const SUMMARY: &'static str =
        "ESMM (SIGIR'18): pCTR and pCVR networks, pCTCVR = pCTR x pCVR, trained on CTR + CTCVR over all rows";
    type Params = EsmmParams;
    fn expand(&self, p: &EsmmParams, env: &GraphEnv) -> Result<GraphSpec> {
        for (key, task) in [("ctr_task", &p.ctr_task), ("ctcvr_task", &p.ctcvr_task)] {
            match env.tasks.iter().find(|t| &t.name == task) {
                Some(t) if t.kind == TaskKind::Binary => {}
                Some(_) => {
                    return Err(Error::arch_param(
                        Self::NAME,
                        key,
                        format!("task `{task}` must be binary"),
                    ))
                }
                None => {
                    let known: Vec<&str> = env.tasks.iter().map(|t| t.name.as_str()).collect();
                    let message = format!("needs a task `{task}`; the data's tasks are: {}", known.join(", "));
                    return Err(Error::arch_param(Self::NAME, key, message));
                }
            }
        }
        if p.cvr_units.is_empty() {
            return Err(Error::arch_param(Self::NAME, "cvr_units", "needs at least one layer"));
        }
        let ctr = format!("tower-{}", p.ctr_task);
        let ctr_tower = MlpTowerParams {
            units: p.ctr_units.clone(),
            ..Default::default()
        };
        let cvr_hidden = MlpParams {
            units: p.cvr_units.clone(),
            ..Default::default()
        };
        let cvr_logit = MlpParams {
            units: vec![1],
            activation: Activation::Identity,
        };
        let nodes = vec![
            NodeSpec::of(&ctr, &MlpTowerKind, &ctr_tower)
                .input(INPUT)
                .task(&p.ctr_task),
            NodeSpec::of("cvr-hidden", &MlpKind, &cvr_hidden).input(INPUT),
            NodeSpec::of("cvr", &MlpKind, &cvr_logit).input("cvr-hidden"),
            NodeSpec::of("ctr-cvr", &FusionKind(FusionOp::Concat), &NoParams {}).inputs([ctr.as_str(), "cvr"]),
            NodeSpec::of(format!("tower-{}", p.ctcvr_task), &CtcvrKind, &NoParams {})
                .input("ctr-cvr")
                .task(&p.ctcvr_task),
        ];
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(Esmm);
mtrec_core::register_kind!(CtcvrKind);
mtrec_core::register_kind!(LogitKind);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
