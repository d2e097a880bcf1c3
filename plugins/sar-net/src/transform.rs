//! `scenario-transform` (a layer): SAR-Net's scenario-specific transform
//! `x' = x * w_s + b_s` (elementwise), `w_s` and `b_s` the row's scenario's
//! `[d]` vectors. `w_s` starts at ones and `b_s` at zeros: training starts
//! from the identity. Per row the two vectors are gathered from the `[D, d]`
//! tables by domain id (one `index_select` each; never per-row matrices).

use candle_core::Tensor;
use mtrec_core::groups::domains_of;
use mtrec_core::{Component, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

/// `scenario-transform` takes no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioTransformParams {}

pub struct ScenarioTransform {
    domains: usize,
    /// `[D, d]`, starts at ones.
    pub scale: Tensor,
    /// `[D, d]`, starts at zeros.
    pub shift: Tensor,
}

impl Layer for ScenarioTransform {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let d = domains_of(ctx, "scenario-transform", self.domains)?;
        let w = self.scale.index_select(d.tensor(), 0)?;
        let b = self.shift.index_select(d.tensor(), 0)?;
        Ok(((x * w)? + b)?)
    }
}

pub struct ScenarioTransformKind;

impl Kind for ScenarioTransformKind {
    type Params = ScenarioTransformParams;
    fn name(&self) -> &'static str {
        "scenario-transform"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "SAR-Net scenario-specific transform x * w_s + b_s (per-domain scale from ones, shift from zeros)"
    }
    fn check(&self, _p: &ScenarioTransformParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if env.domains == 0 {
            return Err("needs data with domains (a domain id per row)".into());
        }
        Ok(io.inputs[0])
    }
    fn build(&self, _p: &ScenarioTransformParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let width = io.inputs[0].width();
        Ok(Component::Layer(Box::new(ScenarioTransform {
            domains: env.domains,
            scale: pb.get("scale", &[env.domains, width], Init::Ones)?,
            shift: pb.get("shift", &[env.domains, width], Init::Zeros)?,
        })))
    }
}

mtrec_core::register_kind!(ScenarioTransformKind);
