//! The domain-aware pruner of one hidden layer: neuron-wise factors `pi`
//! from the row's domain embedding and the layer's output, the three
//! variants of the paper, the sharpness schedule, and the sparsity
//! regulariser.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use mtrec_core::components::dense::{Activation, Linear};
use mtrec_core::{ops, Init, ParamBuilder, Result};

/// How the pruner turns its scores `v` into factors `pi` (the paper's
/// three weighting-factor methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `pi = sigmoid(alpha_t * v)`: a soft 0/1 mask that sharpens as the
    /// sharpness `alpha_t` grows with the training steps.
    Binarization,
    /// `pi = beta * sigmoid(v)`: scales neurons in `(0, beta)`, prunes none.
    Scaling,
    /// `pi = beta * sigmoid(alpha_t * v)`, set to 0 where it is below
    /// `epsilon`: scaling with explicit pruning.
    #[default]
    Fusion,
}

impl Variant {
    /// Whether the factors follow the annealed sharpness `alpha_t`.
    pub fn anneals(self) -> bool {
        !matches!(self, Variant::Scaling)
    }
}

/// The sharpness `alpha_t = min(alpha_max, alpha_start + alpha_growth * t)`
/// after `t` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sharpness {
    pub start: f64,
    pub growth: f64,
    pub max: f64,
}

impl Sharpness {
    pub fn at(&self, step: u64) -> f64 {
        (self.start + self.growth * step as f64).min(self.max)
    }
}

/// How the factors are formed from the scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FactorRule {
    pub variant: Variant,
    pub beta: f64,
    pub epsilon: f64,
}

/// One layer's factors.
#[derive(Clone, Debug)]
pub struct LayerFactors {
    /// The keep scores `g = sigmoid(alpha * v)` (`alpha = 1` for Scaling),
    /// `[B, d]` in `(0, 1)`: the relaxed mask the sparsity regulariser reads.
    pub keep: Tensor,
    /// The factors `pi` `[B, d]` the layer's output is multiplied with.
    pub factors: Tensor,
}

impl FactorRule {
    /// The factors of scores `v` `[B, d]` at sharpness `alpha`.
    pub fn factors(&self, v: &Tensor, alpha: f64) -> Result<LayerFactors> {
        let alpha = if self.variant.anneals() { alpha } else { 1.0 };
        let keep = Activation::Sigmoid.apply_plain(&(v * alpha)?)?;
        let factors = match self.variant {
            Variant::Binarization => keep.clone(),
            Variant::Scaling => (&keep * self.beta)?,
            Variant::Fusion => {
                let scaled = (&keep * self.beta)?;
                // A constant 0/1 mask: the kept factors carry the gradient,
                // the pruned ones are exactly 0 (Scenario-Wise Rec multiplies
                // by `sign(pi - epsilon)`, turning pruned neurons into
                // negated ones instead).
                let kept = scaled.ge(self.epsilon)?.to_dtype(scaled.dtype())?;
                (scaled * kept)?
            }
        };
        Ok(LayerFactors { keep, factors })
    }
}

/// The pruner's weights for one layer of width `d`: `v = h W_h + e_p W_e + b`,
/// i.e. one linear map of the concatenation `[h; e_p]` stored as its two
/// blocks, so that the domain block runs once per domain (`[D, d]`) instead
/// of once per row. Names: `hidden.weight [d, d]`, `domain.weight [e, d]`,
/// `domain.bias [d]`.
#[derive(Clone, Debug)]
pub struct Pruner {
    hidden: Tensor,
    domain: Linear,
}

impl Pruner {
    pub fn new(pb: &ParamBuilder, width: usize, domain_dim: usize) -> Result<Self> {
        // PyTorch's U(+-1/sqrt(fan_in)) for the concatenated input.
        let fan_in = width + domain_dim;
        let hidden = pb.get("hidden.weight", &[width, width], Init::FanIn(fan_in))?;
        let domain = Linear {
            weight: pb.get("domain.weight", &[domain_dim, width], Init::FanIn(fan_in))?,
            bias: Some(pb.get("domain.bias", &[width], Init::FanIn(fan_in))?),
        };
        Ok(Self { hidden, domain })
    }

    /// The scores `v` `[B, d]` of the layer output `h` `[B, d]` whose rows'
    /// domain embeddings are rows `domain_ids` of `embeddings` `[D, e]`.
    pub fn scores(&self, h: &Tensor, embeddings: &Tensor, domain_ids: &Tensor) -> Result<Tensor> {
        let per_domain = self.domain.forward(embeddings)?;
        let own = ops::linear_act(h, &self.hidden, None, Activation::Identity)?;
        Ok(own.add(&per_domain.index_select(domain_ids, 0)?)?)
    }
}

/// The sparsity regulariser's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparsityTarget {
    /// Target ratio `r` of pruned neurons per layer, in `[0, 1)`.
    pub ratio: f64,
    /// Half-width `delta` of the band around `r` inside which there is no penalty.
    pub tolerance: f64,
    /// The weight `lambda` (0: no regulariser).
    pub weight: f64,
}

impl SparsityTarget {
    /// `lambda * mean_b sum_l max(0, |s_bl - r| - delta)^2` with
    /// `s_bl = 1 - mean_i keep_bil`, the relaxed ratio of row `b`'s pruned
    /// neurons in layer `l`: a scalar on the training graph.
    pub fn penalty(&self, layers: &[LayerFactors]) -> Result<Tensor> {
        let mut per_row: Option<Tensor> = None;
        for l in layers {
            let sparsity = l.keep.mean_keepdim(1)?.affine(-1.0, 1.0)?;
            let off = (sparsity - self.ratio)?.abs()?;
            let outside = (off - self.tolerance)?.relu()?.sqr()?;
            per_row = Some(match per_row {
                None => outside,
                Some(sum) => (sum + outside)?,
            });
        }
        match per_row {
            Some(t) => Ok((t.mean_all()? * self.weight)?),
            None => Err(mtrec_core::Error::Input(
                "the sparsity penalty needs at least one layer".into(),
            )),
        }
    }
}
