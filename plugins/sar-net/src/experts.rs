//! `sar-experts` (an expert bank): SAR-Net's debias experts, scenario-shared
//! or scenario-specific.
//!
//! Each expert is a main network over the node's input plus a bias network
//! over the debias features `z` (read through `ForwardCtx::features`, never
//! part of the model input), and the bank has one Fairness Coefficient
//! network `FC(z)`, a per-sample weight in `(0, 1)` learned from the debias
//! features. In training expert `k`'s output is
//!
//! ```text
//! e_k = main_k(x) + FC(z) * bias_k(z),   FC(z) = sigmoid(MLP_fc(z))  (one scalar per row)
//! ```
//!
//! and in evaluation (serving) the bias networks and FC are dropped:
//! `e_k = main_k(x)`. The bias networks soak up what the debias features
//! explain (a promotion's exposure boost, a position...) so the main networks
//! do not learn it; FC decides per sample how much of the bias networks'
//! prediction enters the expert's output (the paper: FC "measures the
//! importance of individual sample" and reweighs "the prediction in the debias
//! expert networks"). Without debias features an expert is its main network
//! only; `fairness_coefficient = false` is the ablation `main + bias`.
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
//! to the expert output, so it must be free in sign). FC network: `fc_units`
//! hidden layers with the activation, then a linear layer to one unit and a
//! sigmoid; one per bank, shared by its experts and (scenario-specific bank)
//! its scenarios, because it weighs a sample, not an expert.
//! Parameter names: `main.*` and `bias.*` per set (`scenario<s>.` prefixed
//! when scenario-specific), `fc.<layer>.weight` `[1, in, out]` and
//! `fc.<layer>.bias` `[1, 1, out]`.

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
    /// Weigh the bias networks' output per sample with the Fairness
    /// Coefficient `FC(z)` (off: `main + bias`, the ablation).
    #[serde(default = "default_fc")]
    pub fairness_coefficient: bool,
    /// Hidden layers of the FC network (then a linear layer to 1 and a sigmoid).
    #[serde(default)]
    pub fc_units: Vec<usize>,
}

fn default_fc() -> bool {
    true
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
            fairness_coefficient: default_fc(),
            fc_units: Vec::new(),
        }
    }
}

/// `count` MLPs over `d_in`: `hidden` layers followed by `act`, then a layer
/// of `head.0` units followed by `head.1`.
fn mlp_head(
    pb: &ParamBuilder,
    count: usize,
    d_in: usize,
    hidden: &[usize],
    act: Activation,
    head: (usize, Activation),
) -> Result<MlpExperts> {
    let mut units = hidden.to_vec();
    units.push(head.0);
    let mut acts = vec![act; hidden.len()];
    acts.push(head.1);
    MlpExperts::with_acts(pb, count, d_in, &units, &acts)
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
            let head = (out, Activation::Identity);
            Some(mlp_head(&pb.pp("bias"), p.count, d_bias, &p.bias_units, act, head)?)
        };
        Ok(Self { main, bias })
    }

    /// `[count, n, out]`; the bias networks run only when `debias` is given
    /// (training).
    fn forward(&self, x: &Tensor, debias: Option<&DebiasInput>) -> Result<Tensor> {
        let h = self.main.forward_bank(x)?;
        let (Some(bias), Some(d)) = (&self.bias, debias) else {
            return Ok(h);
        };
        let b = bias.forward_bank(&d.z)?;
        let b = match &d.fc {
            // `[n, 1]` -> `[1, n, 1]`: one weight per row, for every expert and unit.
            Some(fc) => b.broadcast_mul(&fc.unsqueeze(0)?)?,
            None => b,
        };
        Ok((h + b)?)
    }
}

/// What the bias networks read for some rows in training: the debias
/// features `[n, d_z]` and the rows' Fairness Coefficients `[n, 1]`.
#[derive(Clone)]
struct DebiasInput {
    z: Tensor,
    fc: Option<Tensor>,
}

impl DebiasInput {
    fn rows_of(&self, groups: &DomainGroups) -> Result<Vec<DebiasInput>> {
        let zs = groups.split(&self.z)?;
        let fcs = match &self.fc {
            Some(fc) => groups.split(fc)?.into_iter().map(Some).collect(),
            None => vec![None; zs.len()],
        };
        Ok(zs.into_iter().zip(fcs).map(|(z, fc)| DebiasInput { z, fc }).collect())
    }
}

pub struct DebiasExperts {
    domains: usize,
    debias: Vec<String>,
    /// One set (shared) or one per scenario.
    sets: Vec<ExpertSet>,
    /// The Fairness Coefficient network: `[n, d_z]` -> `[1, n, 1]` in `(0, 1)`.
    fc: Option<MlpExperts>,
    specific: bool,
}

impl DebiasExperts {
    /// The debias input of the whole batch; `None` in evaluation (serving
    /// never reads the debias features) and without debias features.
    fn debias_input(&self, ctx: &ForwardCtx) -> Result<Option<DebiasInput>> {
        if !ctx.train || self.debias.is_empty() {
            return Ok(None);
        }
        let z = ctx.views("sar-experts")?.features(&self.debias)?;
        let fc = match &self.fc {
            Some(net) => Some(net.forward_bank(&z)?.squeeze(0)?),
            None => None,
        };
        Ok(Some(DebiasInput { z, fc }))
    }
}

impl Expert for DebiasExperts {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let debias = self.debias_input(ctx)?;
        if !self.specific {
            return self.sets[0].forward(x, debias.as_ref());
        }
        let domains = domains_of(ctx, "sar-experts", self.domains)?;
        let groups = DomainGroups::new(domains)?;
        let xs = groups.split(x)?;
        let ds = match &debias {
            Some(d) => d.rows_of(&groups)?.into_iter().map(Some).collect(),
            None => vec![None; xs.len()],
        };
        // Each group: `[count, n_p, out]`; rows first for the merge, then back.
        let parts = groups
            .groups
            .iter()
            .zip(xs.iter().zip(&ds))
            .map(|(g, (xp, dp))| Ok(self.sets[g.domain].forward(xp, dp.as_ref())?.transpose(0, 1)?))
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
        "SAR-Net debias experts: main MLP + FC(z) * bias net over debias features z (training only), shared or per scenario"
    }
    fn check(&self, p: &DebiasExpertsParams, _io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        if p.count == 0 {
            return Err("`count` must be at least 1".into());
        }
        check_units(&p.units, false)?;
        if p.bias_units.contains(&0) {
            return Err(format!("`bias_units` = {:?} has a zero width", p.bias_units));
        }
        if p.fc_units.contains(&0) {
            return Err(format!("`fc_units` = {:?} has a zero width", p.fc_units));
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
        // Drawn after the experts, so that they start as without FC.
        let fc = if p.debias.is_empty() || !p.fairness_coefficient {
            None
        } else {
            let head = (1, Activation::Sigmoid);
            Some(mlp_head(&pb.pp("fc"), 1, d_bias, &p.fc_units, p.activation, head)?)
        };
        Ok(Component::Expert(Box::new(DebiasExperts {
            domains: env.domains,
            debias: p.debias.clone(),
            sets,
            fc,
            specific: p.scenario_specific,
        })))
    }
}

mtrec_core::register_kind!(DebiasExpertsKind);
