//! AITM, Adaptive Information Transfer Multi-task (Xi et al., "Modeling the
//! Sequential Dependence among Audience Multi-step Conversions with
//! Multi-task Learning in Targeted Display Advertising", KDD 2021,
//! arXiv 2105.08489).
//!
//! # The model
//!
//! The tasks are the steps of a conversion funnel, in the config's task
//! order (impression -> click -> purchase: tasks `click`, `purchase`). Every
//! task reads the shared feature embeddings (mtrec's `input`).
//!
//! - Task `t`'s own representation: `q_t = f_t(x)`, a per-task MLP over the
//!   input ("tower" in the paper), of width `k`.
//! - Information transferred from the previous step: `p_(t-1) = g_(t-1)(z_(t-1))`,
//!   an MLP of `z_(t-1)` (the paper's "info" layer), also of width `k`.
//! - The AIT module attends over the two vectors `u in {p_(t-1), q_t}`:
//!   `z_t = sum_u w_u h1(u)`, `w_u = softmax_u(<h2(u), h3(u)> / sqrt(k))`,
//!   `h1, h2, h3` linear maps (component kind `ait`, [`ait`]). The first
//!   task has nothing to receive: `z_1 = q_1`.
//! - Task `t`'s prediction: `y_t = sigmoid(head_t(z_t))`.
//! - Loss: each task's cross-entropy plus the behavioural expectation
//!   calibrator `alpha * sum_(t>=2) max(y_t - y_(t-1), 0)`, averaged over the
//!   batch's rows (component kind `funnel-calibrator`, [`calibrator`]). It
//!   is added to the objective through `ForwardCtx::add_penalty`, so a loss
//!   balancer weighs the task losses, never this term.
//!
//! # In mtrec terms
//!
//! For tasks `t1, t2, t3` the `aitm` template expands to
//!
//! ```text
//! input -> q-t1 (mlp) ----------------------------------> tower-t1 (mlp-tower, task t1)   z_1 = q_1
//! q-t1  -> info-t1 (mlp)                                   p_1
//! [info-t1, input -> q-t2] -> ait-t2 (ait) -------------> tower-t2                       z_2
//! ait-t2 -> info-t2 (mlp); [info-t2, q-t3] -> ait-t3 ---> tower-t3                       z_3
//! [tower-t1, tower-t2, tower-t3] -> calibrator (funnel-calibrator)
//! ```
//!
//! The calibrator reads the towers' logits and feeds no tower: it is a node
//! of an *objective-term* kind (`Kind::objective_term`), which graph
//! validation lets end a path. Reading the towers downstream keeps each
//! task's structure as it is: a tower is not "shared" with the next task
//! (`Model::shared_vars`, which GradNorm and PCGrad use), only `q-t1`,
//! `info-t1`, `q-t2`... that the next steps read through the AIT modules.
//!
//! # Choices the paper leaves open
//!
//! - Widths (the authors' code, Ali-CCP): `q_t` by a ReLU MLP
//!   `[128, 64, 32]` (`task_units`), so `k = 32`; `g_t` one ReLU layer of
//!   `k` units (`info_units`, whose last width must be `k`); the head from
//!   `z_t` to the logit a single linear map (`tower_units = []`; the paper
//!   says "MLP": give hidden widths for one).
//! - `h1, h2, h3`: `k -> k` linear maps without bias (`ait_bias = false`),
//!   as in the authors' code. The code names the maps the other way round
//!   (value `h3`, scores `<h1, h2>`): the same family of functions; we follow
//!   the paper's equation. The scale is `sqrt(k)`, `k` the maps' output
//!   width. Initialisation is the core's fan-in uniform, like every mtrec
//!   linear map (the code draws them from N(0, 0.01^2)).
//! - The calibrator is on predicted probabilities (`sigmoid` of the logits),
//!   averaged over every row of the batch whatever the tasks' sample-space
//!   masks (it needs no label), with the gradient reaching both towers of
//!   each pair. `alpha = 0.6`, the paper's value; `alpha = 0` leaves it out
//!   of the graph.
//! - Sample spaces: as in the paper, every step's label should be end to
//!   end over all impressions (`purchase` = clicked and bought, mask all
//!   rows), which is what makes `y_t <= y_(t-1)` an expectation. With a
//!   post-click conversion task (mask = clicked rows) `y_t` estimates
//!   `P(buy | click)`, which may exceed `P(click)`: set `alpha = 0` there.
//! - Regression tasks get the transfer but no calibrator (it compares
//!   probabilities): the calibrator is built only when every task is binary.
//! - No dropout (mtrec has none; the authors' code keeps 0.9 / 0.7 / 0.7).
//! - The last step's `g_T` is not built: nothing would read it.

pub mod ait;
pub mod calibrator;

use mtrec_core::components::mlp::{MlpKind, MlpParams};
use mtrec_core::components::tower::{MlpTowerKind, MlpTowerParams};
use mtrec_core::protocol::{check_units, tower_id};
use mtrec_core::{Error, GraphEnv, GraphSpec, NodeSpec, Result, TaskKind, Template, INPUT};
use serde::{Deserialize, Serialize};

use ait::{AitKind, AitParams};
use calibrator::{CalibratorKind, CalibratorParams, PAPER_ALPHA};

/// The `aitm` template's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AitmParams {
    /// Each task's network `f_t` over the input, giving `q_t`; its last width is `k`.
    pub task_units: Vec<usize>,
    /// The information network `g_t` giving `p_t` from `z_t`; its last width must be `k`.
    pub info_units: Vec<usize>,
    /// Hidden layers of each task's head from `z_t` to its logit (may be empty).
    pub tower_units: Vec<usize>,
    /// Biases in the AIT module's `h1, h2, h3`.
    pub ait_bias: bool,
    /// Weight of the behavioural expectation calibrator (0: none).
    pub alpha: f64,
}

impl Default for AitmParams {
    fn default() -> Self {
        Self {
            task_units: vec![128, 64, 32],
            info_units: vec![32],
            tower_units: vec![],
            ait_bias: false,
            alpha: PAPER_ALPHA,
        }
    }
}

pub struct Aitm;

impl Aitm {
    fn check(p: &AitmParams) -> Result<()> {
        let bad = |key: &str, m: String| Error::arch_param(Self::NAME, key, m);
        check_units(&p.task_units, false).map_err(|m| bad("task_units", m))?;
        check_units(&p.info_units, false).map_err(|m| bad("info_units", m))?;
        check_units(&p.tower_units, true).map_err(|m| bad("tower_units", m))?;
        let (k, info) = (p.task_units.last(), p.info_units.last());
        if info != k {
            return Err(bad(
                "info_units",
                format!(
                    "the last width {info:?} must equal `task_units`' last width {k:?}: the AIT module \
                     attends over p_(t-1) and q_t with the same maps"
                ),
            ));
        }
        if !(p.alpha.is_finite() && p.alpha >= 0.0) {
            return Err(bad("alpha", format!("{} must be a finite number >= 0", p.alpha)));
        }
        Ok(())
    }
}

impl Template for Aitm {
    const NAME: &'static str = "aitm";
    const SUMMARY: &'static str = "AITM (KDD'21): tasks as a funnel in task order, attention-based transfer from each step to the next, behavioural expectation calibrator";
    type Params = AitmParams;

    fn expand(&self, p: &AitmParams, env: &GraphEnv) -> Result<GraphSpec> {
        Self::check(p)?;
        let q = MlpParams {
            units: p.task_units.clone(),
            ..Default::default()
        };
        let info = MlpParams {
            units: p.info_units.clone(),
            ..Default::default()
        };
        let ait = AitParams {
            dim: None,
            bias: p.ait_bias,
        };
        let head = MlpTowerParams {
            units: p.tower_units.clone(),
            ..Default::default()
        };
        let mut nodes = Vec::new();
        // The node holding z of the previous step, if any.
        let mut previous: Option<String> = None;
        for (i, task) in env.tasks.iter().enumerate() {
            let name = &task.name;
            let q_id = format!("q-{name}");
            nodes.push(NodeSpec::of(&q_id, &MlpKind, &q).input(INPUT));
            let z = match &previous {
                None => q_id,
                Some(prev) => {
                    let info_id = format!("info-{}", env.tasks[i - 1].name);
                    nodes.push(NodeSpec::of(&info_id, &MlpKind, &info).input(prev));
                    let ait_id = format!("ait-{name}");
                    nodes.push(NodeSpec::of(&ait_id, &AitKind, &ait).inputs([info_id, q_id]));
                    ait_id
                }
            };
            nodes.push(NodeSpec::of(tower_id(name), &MlpTowerKind, &head).input(&z).task(name));
            previous = Some(z);
        }
        let all_binary = env.tasks.iter().all(|t| t.kind == TaskKind::Binary);
        if p.alpha > 0.0 && all_binary && env.tasks.len() >= 2 {
            let params = CalibratorParams { alpha: p.alpha };
            nodes.push(
                NodeSpec::of("calibrator", &CalibratorKind, &params)
                    .inputs(env.tasks.iter().map(|t| tower_id(&t.name))),
            );
        }
        Ok(GraphSpec { nodes })
    }
}

mtrec_core::register_template!(Aitm);

/// Call from a binary so that the linker keeps this crate's registrations.
pub fn link() {}
