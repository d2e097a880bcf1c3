//! `ppnet-gates` (a layer): the Gate NUs of the Parameter Personalized
//! Network (paper section 3.4). `delta_task = GateNU(E(F_u) (+) E(F_i) (+)
//! E(F_a) (+) stopgrad(O_ep))`: the prior features (user, item, author
//! ids...) and the personalised embeddings, the latter with their gradient
//! stopped so that PPNet's gates do not pull EPNet's output.
//!
//! One Gate NU per tower layer `l`, shared by the tasks: its output, `T x
//! d_l` factors, is split into one `d_l` vector per task (`d_l` the width of
//! the layer's input). The node passes its input through and appends the
//! factors, which the `ppnet-tower`s read ([`Layout`]):
//!
//! ```text
//! [ O_ep (W) | layer 0: task 0 (W), .., task T-1 (W) | layer 1: task 0 (u_1), .. | .. ]
//! ```

use candle_core::Tensor;
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

use crate::gate_nu::{check_gate, GateNu};
use crate::{check_names, DEFAULT_GAMMA, DEFAULT_GATE_HIDDEN};

/// Where each task's factors of each tower layer sit in a `ppnet-gates`
/// output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tasks: usize,
    /// The input width of each tower layer: `[W, u_1, .., u_L]` (the last
    /// is the input of the tower's linear output layer).
    pub widths: Vec<usize>,
}

impl Layout {
    /// The layout for towers of hidden `units` over an input of width `input`.
    pub fn new(input: usize, units: &[usize], tasks: usize) -> Self {
        let mut widths = vec![input];
        widths.extend_from_slice(units);
        Self { tasks, widths }
    }

    /// The layout a `ppnet-gates` output of `width` columns must have for
    /// towers of hidden `units` and `tasks` tasks: `width = W + T (W + sum u)`.
    pub fn from_output(width: usize, units: &[usize], tasks: usize) -> std::result::Result<Self, String> {
        let hidden = tasks * units.iter().sum::<usize>();
        let input = width
            .checked_sub(hidden)
            .filter(|rest| *rest > 0 && rest % (tasks + 1) == 0)
            .map(|rest| rest / (tasks + 1))
            .ok_or_else(|| {
                format!(
                    "its input has width {width}, which is no `ppnet-gates` output for {tasks} tasks and tower \
                     units {units:?} (that is W + {tasks} x (W + sum of units) columns): read a `ppnet-gates` node \
                     with the same `tasks` and `units`"
                )
            })?;
        Ok(Self::new(input, units, tasks))
    }

    /// The width of the tower's input (`O_ep`).
    pub fn input(&self) -> usize {
        self.widths[0]
    }

    /// The width of the whole `ppnet-gates` output.
    pub fn width(&self) -> usize {
        self.input() + self.tasks * self.widths.iter().sum::<usize>()
    }

    /// `(offset, len)` of `task`'s factors for tower layer `layer`.
    pub fn factors(&self, layer: usize, task: usize) -> (usize, usize) {
        let before: usize = self.widths[..layer].iter().sum();
        let d = self.widths[layer];
        (self.input() + self.tasks * before + task * d, d)
    }
}

/// `ppnet-gates` parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpnetGatesParams {
    /// Prior features (sparse: their embeddings; dense: their values).
    pub prior: Vec<String>,
    /// Hidden units of the towers these gates personalise.
    pub units: Vec<usize>,
    /// Number of towers (tasks) the factors are split over.
    pub tasks: usize,
    #[serde(default = "default_gate_hidden")]
    pub gate_hidden: usize,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

fn default_gate_hidden() -> usize {
    DEFAULT_GATE_HIDDEN
}
fn default_gamma() -> f64 {
    DEFAULT_GAMMA
}

impl Default for PpnetGatesParams {
    fn default() -> Self {
        Self {
            prior: vec!["user_id".into(), "item_id".into()],
            units: vec![16, 8],
            tasks: 2,
            gate_hidden: DEFAULT_GATE_HIDDEN,
            gamma: DEFAULT_GAMMA,
        }
    }
}

pub struct PpnetGates {
    prior: Vec<String>,
    /// One Gate NU per tower layer.
    pub gates: Vec<GateNu>,
}

impl Layer for PpnetGates {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let prior = ctx.views("ppnet-gates")?.features(&self.prior)?;
        let z = Tensor::cat(&[&prior, &x.detach()], 1)?;
        let mut parts = vec![x.clone()];
        for g in &self.gates {
            parts.push(g.forward(&z)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }
}

pub struct PpnetGatesKind;

impl Kind for PpnetGatesKind {
    type Params = PpnetGatesParams;
    fn name(&self) -> &'static str {
        "ppnet-gates"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "PEPNet's PPNet gates: per tower layer one GateNU([prior; stopgrad(input)]) split over the tasks; outputs [input | factors]"
    }
    fn check(&self, p: &PpnetGatesParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if p.prior.is_empty() {
            return Err("`prior` names no feature: PPNet personalises the towers from prior features, e.g. prior = [\"user_id\", \"item_id\"]".into());
        }
        check_names("prior", &p.prior, env)?;
        check_units(&p.units, true)?;
        if p.tasks == 0 {
            return Err("`tasks` must be at least 1".into());
        }
        check_gate(p.gate_hidden, p.gamma).map_err(|(_, m)| m)?;
        Ok(Port::Dense {
            width: Layout::new(io.inputs[0].width(), &p.units, p.tasks).width(),
        })
    }
    fn build(&self, p: &PpnetGatesParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let width = io.inputs[0].width();
        let prior: usize = p.prior.iter().filter_map(|n| env.features.feature_width(n)).sum();
        let layout = Layout::new(width, &p.units, p.tasks);
        let gates = layout
            .widths
            .iter()
            .enumerate()
            .map(|(l, d)| {
                GateNu::new(
                    &pb.pp(format!("layer{l}")),
                    prior + width,
                    p.gate_hidden,
                    p.tasks * d,
                    p.gamma,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Component::Layer(Box::new(PpnetGates {
            prior: p.prior.clone(),
            gates,
        })))
    }
}

mtrec_core::register_kind!(PpnetGatesKind);
