//! `sar-experts` (an expert bank): SAR-Net's debias experts, scenario-shared
//! or scenario-specific.
//!
//! Each expert is a main network over the node's input plus a bias network
//! over the debias features (read through `ForwardCtx::features`, never part
//! of the model input). In training the expert's output is
//! `main(x) + bias(z)`; in evaluation (serving) the bias network is dropped
//! and the output is `main(x)`: the bias network soaks up what the debias
//! features explain (exposure, position...) so the main network does not
//! learn it. Without debias features an expert is its main network only.
//!
//! - shared (`scenario_specific = false`): `count` experts every row uses, one
//!   batched matmul per layer over `[count, in, out]` weights;
//! - scenario-specific (`scenario_specific = true`): `count` experts per
//!   scenario. The batch's rows are grouped by domain and each group runs
//!   through its own scenario's bank (one batched matmul per domain present
//!   and layer), then rows are put back in order. The bank's output slot `k`
//!   of a row is expert `k` of that row's scenario, so a gate over
//!   `[shared; specific]` mixes exactly the experts usable for the row.
//!
//! Main network: `units` layers, activation after every layer (as
//! `mlp-experts`). Bias network: `bias_units` hidden layers with the
//! activation, then a linear layer to the expert's width (the bias is added
//! to the expert output, so it must be free in sign).

use candle_core::Tensor;
use mtrec_core::components::dense::Activation;
use mtrec_core::components::experts::MlpExperts;
use mtrec_core::groups::{domains_of, DomainGroups};
use mtrec_core::protocol::check_units;
use mtrec_core::{Component, Error, Expert, ForwardCtx, GraphEnv, Kind, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebiasExpertsParams {
    pub count: usize,
    pub units: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub scenario_specific: bool,
    /// Debias features (sparse fields: their embeddings; dense: their values).
    #[serde(default)]
    pub debias: Vec<String>,
    #[serde(default)]
    pub bias_units: Vec<usize>,
}

impl Default for DebiasExpertsParams {
    fn default() -> Self {
        Self {
            count: 2,
            units: vec![32],
            activation: Activation::Relu,
            scenario_specific: false,
            debias: Vec::new(),
            bias_units: Vec::new(),
        }
    }
}

/// One set of experts: main networks and (with debias features) bias networks.
struct ExpertSet {
    main: MlpExperts,
    bias: Option<MlpExperts>,
}

impl ExpertSet {
    fn new(pb: &ParamBuilder, p: &DebiasExpertsParams, d_in: usize, d_bias: usize) -> Result<Self> {
        let act = p.activation;
        let main = MlpExperts::with_acts(&pb.pp("main"), p.count, d_in, &p.units, &vec![act; p.units.len()])?;
        let bias = if p.debias.is_empty() {
            None
        } else {
            let out = *p.units.last().unwrap_or(&d_in);
            let mut units = p.bias_units.clone();
            units.push(out);
            let mut acts = vec![act; p.bias_units.len()];
            acts.push(Activation::Identity);
            Some(MlpExperts::with_acts(&pb.pp("bias"), p.count, d_bias, &units, &acts)?)
        };
        Ok(Self { main, bias })
    }

    fn forward(&self, x: &Tensor, z: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let h = self.main.forward_bank(x)?;
        match (&self.bias, z, train) {
            (Some(bias), Some(z), true) => Ok((h + bias.forward_bank(z)?)?),
            _ => Ok(h),
        }
    }
}

pub struct DebiasExperts {
    domains: usize,
    debias: Vec<String>,
    /// One set (shared) or one per scenario.
    sets: Vec<ExpertSet>,
    specific: bool,
}

impl Expert for DebiasExperts {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        // The debias features are read in training only: serving never needs them.
        let z = if ctx.train && !self.debias.is_empty() {
            Some(ctx.views("sar-experts")?.features(&self.debias)?)
        } else {
            None
        };
        if !self.specific {
            return self.sets[0].forward(x, z.as_ref(), ctx.train);
        }
        let domains = domains_of(ctx, "sar-experts", self.domains)?;
        let groups = DomainGroups::new(domains)?;
        let xs = groups.split(x)?;
        let zs = match &z {
            Some(z) => groups.split(z)?.into_iter().map(Some).collect(),
            None => vec![None; xs.len()],
        };
        // Each group: `[count, n_p, out]`; rows first for the merge, then back.
        let parts = groups
            .groups
            .iter()
            .zip(xs.iter().zip(&zs))
            .map(|(g, (xp, zp))| {
                Ok(self.sets[g.domain]
                    .forward(xp, zp.as_ref(), ctx.train)?
                    .transpose(0, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(groups.merge(&parts)?.transpose(0, 1)?.contiguous()?)
    }
}

pub struct DebiasExpertsKind;

fn debias_width(p: &DebiasExpertsParams, env: &GraphEnv) -> std::result::Result<usize, String> {
    let mut w = 0;
    for name in &p.debias {
        w += env
            .features
            .feature_width(name)
            .ok_or_else(|| format!("debias feature `{name}` is no sparse or dense feature of the data"))?;
    }
    Ok(w)
}

impl Kind for DebiasExpertsKind {
    type Params = DebiasExpertsParams;
    fn name(&self) -> &'static str {
        "sar-experts"
    }
    fn role(&self) -> Role {
        Role::Expert
    }
    fn summary(&self) -> &'static str {
        "SAR-Net debias experts: main MLP + bias net over debias features (training only), shared or per scenario"
    }
    fn check(&self, p: &DebiasExpertsParams, _io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if p.count == 0 {
            return Err("`count` must be at least 1".into());
        }
        check_units(&p.units, false)?;
        if p.bias_units.contains(&0) {
            return Err(format!("`bias_units` = {:?} has a zero width", p.bias_units));
        }
        if p.scenario_specific && env.domains == 0 {
            return Err("scenario-specific experts need data with domains".into());
        }
        debias_width(p, env)?;
        Ok(Port::Bank {
            count: p.count,
            width: *p.units.last().unwrap_or(&0),
        })
    }
    fn build(&self, p: &DebiasExpertsParams, io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let d_in = io.inputs[0].width();
        let d_bias = debias_width(p, env).map_err(|m| Error::GraphWide(format!("sar-experts: {m}")))?;
        let sets = if p.scenario_specific {
            (0..env.domains)
                .map(|s| ExpertSet::new(&pb.pp(format!("scenario{s}")), p, d_in, d_bias))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![ExpertSet::new(pb, p, d_in, d_bias)?]
        };
        Ok(Component::Expert(Box::new(DebiasExperts {
            domains: env.domains,
            debias: p.debias.clone(),
            sets,
            specific: p.scenario_specific,
        })))
    }
}

mtrec_core::register_kind!(DebiasExpertsKind);
