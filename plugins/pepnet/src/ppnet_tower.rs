//! `ppnet-tower` (a tower): one task's DNN personalised by PPNet,
//! `H_(l+1) = act((delta_task^l * H_l) W_l + b_l)` for every hidden layer,
//! and the logit `(delta_task^L * H_L) W_out + b_out`: every layer's input,
//! the output layer's included, is rescaled by the task's factors that the
//! `ppnet-gates` node it reads appended to `H_0 = O_ep` ([`Layout`]).

use candle_core::Tensor;
use mtrec_core::components::dense::{Activation, Linear};
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Kind, NodeIo, ParamBuilder, Port, Result, Role, Tower};
use serde::{Deserialize, Serialize};

use crate::ppnet_gates::Layout;

/// `ppnet-tower` parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpnetTowerParams {
    /// Hidden layer widths (may be empty), as in the `ppnet-gates` it reads.
    pub units: Vec<usize>,
    /// Number of tasks of that `ppnet-gates` node.
    pub tasks: usize,
    /// This tower's task slot among them (0-based).
    pub slot: usize,
    #[serde(default)]
    pub activation: Activation,
}

impl Default for PpnetTowerParams {
    fn default() -> Self {
        Self {
            units: vec![16, 8],
            tasks: 2,
            slot: 0,
            activation: Activation::Relu,
        }
    }
}

pub struct PpnetTower {
    layout: Layout,
    slot: usize,
    pub hidden: Vec<Linear>,
    pub out: Linear,
    activation: Activation,
}

impl PpnetTower {
    /// The task's factors of tower layer `layer` in the gates' output `x`.
    fn factors(&self, x: &Tensor, layer: usize) -> Result<Tensor> {
        let (offset, len) = self.layout.factors(layer, self.slot);
        Ok(x.narrow(1, offset, len)?)
    }
}

impl Tower for PpnetTower {
    fn forward(&self, x: &Tensor, _ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = x.narrow(1, 0, self.layout.input())?;
        for (l, layer) in self.hidden.iter().enumerate() {
            h = layer.forward_act(&(h * self.factors(x, l)?)?, self.activation)?;
        }
        let last = self.factors(x, self.hidden.len())?;
        self.out.forward(&(h * last)?)
    }
}

pub struct PpnetTowerKind;

impl Kind for PpnetTowerKind {
    type Params = PpnetTowerParams;
    fn name(&self) -> &'static str {
        "ppnet-tower"
    }
    fn role(&self) -> Role {
        Role::Tower
    }
    fn summary(&self) -> &'static str {
        "PEPNet's PPNet task tower over a `ppnet-gates` output: every layer's input times the task's factors"
    }
    fn check(&self, p: &PpnetTowerParams, io: &NodeIo, _env: &GraphEnv) -> std::result::Result<Port, String> {
        check_units(&p.units, true)?;
        if p.slot >= p.tasks {
            return Err(format!(
                "`slot` = {} must be below `tasks` = {} (task slots are 0-based)",
                p.slot, p.tasks
            ));
        }
        Layout::from_output(io.inputs[0].width(), &p.units, p.tasks)?;
        Ok(Port::Dense { width: 1 })
    }
    fn build(&self, p: &PpnetTowerParams, io: &NodeIo, _env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let layout = Layout::from_output(io.inputs[0].width(), &p.units, p.tasks)
            .map_err(|m| mtrec_core::Error::GraphWide(format!("ppnet-tower: {m}")))?;
        let hidden_pb = pb.pp("hidden");
        let hidden = layout
            .widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&hidden_pb.pp(i.to_string()), w[0], w[1], true))
            .collect::<Result<Vec<_>>>()?;
        let last = *layout.widths.last().unwrap_or(&layout.input());
        let out = Linear::new(&pb.pp("out"), last, 1, true)?;
        Ok(Component::Tower(Box::new(PpnetTower {
            layout,
            slot: p.slot,
            hidden,
            out,
            activation: p.activation,
        })))
    }
}

mtrec_core::register_kind!(PpnetTowerKind);
