//! `sar-behaviour` (a layer): SAR-Net's cross-scenario behaviour extraction.
//!
//! Two attentions over the user's behaviour sequence, `j = 1..L`:
//! - item attention: `s1_j = (e_target W_i) . e_item_j / sqrt(d_item)`, the
//!   target item against each behaviour's item;
//! - scenario attention: `s2_j = (c W_s) . e_scen_j / sqrt(d_scen)`, the
//!   current scenario context `c` against the scenario each behaviour
//!   happened in.
//!
//! Their weights combine as `a = softmax_j(s1_j + s2_j)` over the real
//! positions, i.e. the product of the two softmax distributions,
//! renormalised: a behaviour counts when it is about a similar item AND
//! happened in a related scenario. The interest vector `sum_j a_j e_item_j`
//! is appended to the input: `[B, W] -> [B, W + d_item]`. Padding is masked
//! out before the softmax (score -1e9, weight exactly 0, then multiplied by
//! the mask), so padded ids change nothing, and a row without behaviours
//! gets the zero vector.
//!
//! The embeddings come from the input layer (`ForwardCtx::features`): the
//! behaviour items share the target item's table when the sequence is
//! declared with `share_with`, so the same item has the same vector in both
//! places. `c` is the embedding of the sparse field `scenario_field` when
//! set (e.g. the `domain` field whose table the behaviour-scenario sequence
//! shares), else a table of this node indexed by the row's domain id.

use candle_core::{Tensor, D};
use mtrec_core::{Component, Error, ForwardCtx, GraphEnv, Init, Kind, Layer, NodeIo, ParamBuilder, Port, Result, Role};
use serde::{Deserialize, Serialize};

/// What a masked position's score becomes: exp of it underflows to exactly 0.
const MASKED: f64 = -1e9;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourParams {
    /// Sequence feature of the behaviour items.
    pub items: String,
    /// Sequence feature of the behaviours' scenarios (aligned with `items`).
    pub scenarios: String,
    /// Sparse field of the target item.
    pub target: String,
    /// Sparse field whose embedding is the current scenario context; `None`:
    /// a table of this node, indexed by the domain id.
    #[serde(default)]
    pub scenario_field: Option<String>,
    /// Width of the node's own scenario table (without `scenario_field`).
    #[serde(default = "default_scenario_dim")]
    pub scenario_dim: usize,
}

fn default_scenario_dim() -> usize {
    4
}

impl Default for BehaviourParams {
    fn default() -> Self {
        Self {
            items: "hist_item_id".into(),
            scenarios: "hist_domain".into(),
            target: "item_id".into(),
            scenario_field: None,
            scenario_dim: default_scenario_dim(),
        }
    }
}

/// The widths this node reads, checked against the feature spec.
struct Widths {
    item: usize,
    target: usize,
    scenario: usize,
    current: usize,
}

fn widths(p: &BehaviourParams, env: &GraphEnv) -> std::result::Result<Widths, String> {
    let f = &env.features;
    let seqs = || {
        let names: Vec<&str> = f.sequences.iter().map(|q| q.name.as_str()).collect();
        if names.is_empty() {
            "the data has none".to_string()
        } else {
            format!("sequences: {}", names.join(", "))
        }
    };
    let items = f
        .sequence(&p.items)
        .ok_or_else(|| format!("`items` = \"{}\" is no sequence feature ({})", p.items, seqs()))?;
    let scen = f
        .sequence(&p.scenarios)
        .ok_or_else(|| format!("`scenarios` = \"{}\" is no sequence feature ({})", p.scenarios, seqs()))?;
    if items.max_len != scen.max_len {
        return Err(format!(
            "`{}` ({} positions) and `{}` ({}) must be aligned: one scenario per behaviour",
            p.items, items.max_len, p.scenarios, scen.max_len
        ));
    }
    let target = f
        .sparse_field(&p.target)
        .ok_or_else(|| format!("`target` = \"{}\" is no sparse field", p.target))?;
    let current = match &p.scenario_field {
        Some(s) => {
            f.sparse_field(s)
                .ok_or_else(|| format!("`scenario_field` = \"{s}\" is no sparse field"))?
                .dim
        }
        None => {
            if env.domains == 0 {
                return Err(
                    "the current scenario is the row's domain, and the data has no domains (set `scenario_field`)"
                        .into(),
                );
            }
            if p.scenario_dim == 0 {
                return Err("`scenario_dim` must be at least 1".into());
            }
            p.scenario_dim
        }
    };
    Ok(Widths {
        item: items.dim,
        target: target.dim,
        scenario: scen.dim,
        current,
    })
}

pub struct BehaviourExtraction {
    d_scen: usize,
    items: String,
    scenarios: String,
    target: String,
    scenario_field: Option<String>,
    /// `[d_target, d_item]`: the target item as an item-attention query.
    item_query: Tensor,
    /// `[d_current, d_scen]`: the current scenario as a scenario-attention query.
    scenario_query: Tensor,
    /// `[D, d_current]` when the current scenario is the domain id.
    scenario_table: Option<Tensor>,
}

/// `q [B, d]` against `keys [B, L, d]`: `[B, L]` scores `k . q / sqrt(d)`.
fn scores(keys: &Tensor, q: &Tensor) -> Result<Tensor> {
    let d = q.dim(1)? as f64;
    Ok((keys.matmul(&q.unsqueeze(2)?)?.squeeze(2)? / d.sqrt())?)
}

impl BehaviourExtraction {
    /// The attention weights `[B, L]` (0 at padding, rows summing to 1, or
    /// to 0 for a row without behaviours) and the interest vectors `[B, d_item]`.
    pub fn attend(&self, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        let views = ctx.views("sar-behaviour")?;
        let items = views.sequence(&self.items)?;
        let scen = views.sequence(&self.scenarios)?;
        let target = views.feature(&self.target)?;
        let current = match (&self.scenario_field, &self.scenario_table) {
            (Some(f), _) => views.feature(f)?,
            (None, Some(table)) => {
                let d = ctx.domains.ok_or_else(|| {
                    Error::Input("`sar-behaviour` needs the domain id of every row, but the batch has none".into())
                })?;
                table.index_select(d.tensor(), 0)?
            }
            (None, None) => return Err(Error::GraphWide("internal: no scenario context".into())),
        };
        let s1 = scores(&items.embeddings, &target.matmul(&self.item_query)?)?;
        let s2 = scores(&scen.embeddings, &current.matmul(&self.scenario_query)?)?;
        // A behaviour is real when both aligned sequences say so.
        let mask = (&items.mask * &scen.mask)?;
        let penalty = ((1.0 - &mask)? * MASKED.abs())?;
        let logits = ((s1 + s2)? - penalty)?;
        // Differentiable softmax (`softmax_last_dim` has no backward); a row
        // with no real position is uniform here and zeroed by the mask.
        let weights = (candle_nn::ops::softmax(&logits, D::Minus1)? * &mask)?;
        let interest = weights.unsqueeze(1)?.matmul(&items.embeddings)?.squeeze(1)?;
        Ok((weights, interest))
    }
}

impl Layer for BehaviourExtraction {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (_, interest) = self.attend(ctx)?;
        Ok(Tensor::cat(&[x, &interest], 1)?)
    }
}

impl std::fmt::Debug for BehaviourExtraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BehaviourExtraction")
            .field("items", &self.items)
            .field("scenarios", &self.scenarios)
            .field("d_scen", &self.d_scen)
            .finish()
    }
}

pub struct BehaviourKind;

impl Kind for BehaviourKind {
    type Params = BehaviourParams;
    fn name(&self) -> &'static str {
        "sar-behaviour"
    }
    fn role(&self) -> Role {
        Role::Layer
    }
    fn summary(&self) -> &'static str {
        "SAR-Net cross-scenario behaviour extraction: item x scenario attention over a behaviour sequence, interest appended"
    }
    fn check(&self, p: &BehaviourParams, io: &NodeIo, env: &GraphEnv) -> std::result::Result<Port, String> {
        let w = widths(p, env)?;
        Ok(Port::Dense {
            width: io.inputs[0].width() + w.item,
        })
    }
    fn build(&self, p: &BehaviourParams, _io: &NodeIo, env: &GraphEnv, pb: &ParamBuilder) -> Result<Component> {
        let w = widths(p, env).map_err(|m| Error::GraphWide(format!("sar-behaviour: {m}")))?;
        let item_query = pb.get("item_query", &[w.target, w.item], Init::FanIn(w.target))?;
        let scenario_query = pb.get("scenario_query", &[w.current, w.scenario], Init::FanIn(w.current))?;
        let scenario_table = match &p.scenario_field {
            Some(_) => None,
            None => Some(pb.get(
                "scenario_embedding",
                &[env.domains, w.current],
                Init::Uniform { lo: -0.05, hi: 0.05 },
            )?),
        };
        Ok(Component::Layer(Box::new(BehaviourExtraction {
            d_scen: w.scenario,
            items: p.items.clone(),
            scenarios: p.scenarios.clone(),
            target: p.target.clone(),
            scenario_field: p.scenario_field.clone(),
            item_query,
            scenario_query,
            scenario_table,
        })))
    }
}

mtrec_core::register_kind!(BehaviourKind);
