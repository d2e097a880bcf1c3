//! What a model reads for one batch of rows, and the per-forward context.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::features::FeatureViews;

/// The domain (scenario) id of every row of a batch, on the host (for grouping
/// rows by domain) and as a `u32` tensor `[B]` (for lookups).
#[derive(Clone, Debug)]
pub struct Domains {
    ids: Vec<u32>,
    tensor: Tensor,
    count: usize,
}

impl Domains {
    /// `count` is the number of domains of the data set; every id must be below it.
    pub fn new(ids: Vec<u32>, count: usize, device: &Device) -> Result<Self> {
        if let Some(bad) = ids.iter().find(|&&d| d as usize >= count) {
            return Err(Error::Input(format!(
                "domain id {bad} is out of range: the data declares {count} domains"
            )));
        }
        let tensor = Tensor::new(ids.as_slice(), device)?;
        Ok(Self { ids, tensor, count })
    }
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    /// Number of domains of the data set (not only those present in the batch).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The batch rows of each domain (`count` lists, rows increasing; empty
    /// for a domain absent from the batch).
    pub fn rows_by_domain(&self) -> Vec<Vec<u32>> {
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); self.count];
        for (r, &d) in self.ids.iter().enumerate() {
            // `Domains::new` guarantees d < count.
            if let Some(rows) = per.get_mut(d as usize) {
                rows.push(r as u32);
            }
        }
        per
    }
}

/// One sequence column of a batch: `[B, L]` `u32` ids (0 past each row's
/// length) and the lengths on the host (masks and mean pooling need them).
#[derive(Clone, Debug)]
pub struct SequenceInput {
    pub ids: Tensor,
    pub lengths: Vec<u32>,
}

impl SequenceInput {
    /// Checks that there is one length per row, each at most `L`.
    pub fn new(ids: Tensor, lengths: Vec<u32>) -> Result<Self> {
        let (b, l) = ids.dims2()?;
        if lengths.len() != b {
            return Err(Error::Input(format!(
                "a sequence has {b} rows of ids but {} lengths",
                lengths.len()
            )));
        }
        if let Some(n) = lengths.iter().find(|&&n| n as usize > l) {
            return Err(Error::Input(format!("a sequence length {n} exceeds its {l} positions")));
        }
        Ok(Self { ids, lengths })
    }

    /// `[B, L]` `f32`: 1 at the first `length` positions of each row, else 0.
    pub fn mask(&self) -> Result<Tensor> {
        let (b, l) = self.ids.dims2()?;
        let mut m = vec![0f32; b * l];
        for (row, &n) in m.chunks_exact_mut(l.max(1)).zip(&self.lengths) {
            row[..n as usize].fill(1.0);
        }
        Ok(Tensor::from_vec(m, (b, l), self.ids.device())?)
    }
}

/// One batch of model inputs, columnar.
///
/// - `sparse`: `[B, F]` `u32` ids, one column per sparse field, each already
///   mapped into `0..vocab` of its field (the out-of-vocabulary id included);
/// - `dense`: `[B, N]` `f32` numeric features, already scaled;
/// - `domains`: the row's domain ids where the data has domains;
/// - `sequences`: one [`SequenceInput`] per sequence feature, in the model's
///   sequence order (set with [`Inputs::with_sequences`]).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub sparse: Option<Tensor>,
    pub dense: Option<Tensor>,
    pub domains: Option<Domains>,
    pub sequences: Vec<SequenceInput>,
    rows: usize,
}

impl Inputs {
    pub fn new(sparse: Option<Tensor>, dense: Option<Tensor>, domains: Option<Domains>) -> Result<Self> {
        let mut rows = None;
        let mut agree = |what: &str, n: usize| -> Result<()> {
            match rows {
                Some(r) if r != n => Err(Error::Input(format!("{what} has {n} rows, other inputs have {r}"))),
                _ => {
                    rows = Some(n);
                    Ok(())
                }
            }
        };
        if let Some(s) = &sparse {
            agree("sparse ids", s.dims2()?.0)?;
        }
        if let Some(d) = &dense {
            agree("dense features", d.dims2()?.0)?;
        }
        if let Some(d) = &domains {
            agree("domain ids", d.ids().len())?;
        }
        let rows = rows.ok_or_else(|| Error::Input("a batch needs at least one input".into()))?;
        Ok(Self {
            sparse,
            dense,
            domains,
            sequences: Vec::new(),
            rows,
        })
    }

    /// These inputs with `sequences` (replacing any), each of the batch's rows.
    pub fn with_sequences(mut self, sequences: Vec<SequenceInput>) -> Result<Self> {
        if let Some(s) = sequences.iter().find(|s| s.lengths.len() != self.rows) {
            return Err(Error::Input(format!(
                "a sequence has {} rows, other inputs have {}",
                s.lengths.len(),
                self.rows
            )));
        }
        self.sequences = sequences;
        Ok(self)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// These rows stably sorted by domain id, with the inverse permutation
    /// (`[B]` `u32`: row `r` of the batch is row `inverse[r]` of the sorted
    /// one); `None` when the batch has no domains or is already sorted.
    pub fn sorted_by_domain(&self) -> Result<Option<(Inputs, Tensor)>> {
        let Some(domains) = &self.domains else {
            return Ok(None);
        };
        let ids = domains.ids();
        if ids.windows(2).all(|w| w[0] <= w[1]) {
            return Ok(None);
        }
        // Rows of domain 0 in order, then domain 1, ...
        let order: Vec<u32> = domains.rows_by_domain().into_iter().flatten().collect();
        let mut inverse = vec![0u32; order.len()];
        for (j, &r) in order.iter().enumerate() {
            inverse[r as usize] = j as u32;
        }
        let device = domains.tensor().device();
        let index = Tensor::new(order.as_slice(), device)?;
        let take = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            Ok(match t {
                Some(t) => Some(t.index_select(&index, 0)?),
                None => None,
            })
        };
        let sorted_ids = order.iter().map(|&r| ids[r as usize]).collect();
        let sequences = self
            .sequences
            .iter()
            .map(|s| {
                Ok(SequenceInput {
                    ids: s.ids.index_select(&index, 0)?,
                    lengths: order.iter().map(|&r| s.lengths[r as usize]).collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sorted = Inputs {
            sparse: take(&self.sparse)?,
            dense: take(&self.dense)?,
            domains: Some(Domains::new(sorted_ids, domains.count(), device)?),
            sequences,
            rows: self.rows,
        };
        Ok(Some((sorted, Tensor::new(inverse.as_slice(), device)?)))
    }
}

/// Terms that components add to the training objective during a training
/// pass ([`ForwardCtx::add_penalty`]): regularisers and auxiliary losses
/// that belong to no single task (a sparsity regulariser, a calibration
/// term across tasks). The trainer adds their sum, unweighted by any loss
/// balancer, to the objective.
#[derive(Debug, Default)]
pub struct Penalties(std::sync::Mutex<Vec<Penalty>>);

/// One term of [`Penalties`]: a scalar tensor on the training graph, already
/// multiplied by its weight, named by the node that added it.
#[derive(Clone, Debug)]
pub struct Penalty {
    pub name: String,
    pub value: Tensor,
}

impl Penalties {
    /// The terms added, in the order the nodes ran.
    pub fn into_inner(self) -> Vec<Penalty> {
        self.0.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Passed to every component's forward.
#[derive(Clone, Copy, Debug)]
pub struct ForwardCtx<'a> {
    /// Training mode (batch statistics, training-only branches) or evaluation.
    pub train: bool,
    pub domains: Option<&'a Domains>,
    /// The batch's features one by one (sequences position by position, side
    /// features included), for components that read features themselves.
    pub features: Option<&'a FeatureViews<'a>>,
    /// Optimizer steps taken before this pass (the trainer's count, kept by
    /// [`crate::Model::set_step`]): schedules that follow training progress,
    /// such as an annealed temperature, read it. Evaluation sees the count
    /// of the last training step; a component whose output depends on it
    /// keeps what it needs in a buffer, so a loaded model reads the same.
    pub step: u64,
    /// Where training passes collect penalty terms (`None` in evaluation
    /// and in passes outside a model, where a penalty is dropped).
    pub penalties: Option<&'a Penalties>,
}

impl<'a> ForwardCtx<'a> {
    pub fn eval() -> Self {
        Self {
            train: false,
            domains: None,
            features: None,
            step: 0,
            penalties: None,
        }
    }
    pub fn train() -> Self {
        Self {
            train: true,
            domains: None,
            features: None,
            step: 0,
            penalties: None,
        }
    }
    pub fn with_domains(mut self, domains: Option<&'a Domains>) -> Self {
        self.domains = domains;
        self
    }
    pub fn with_step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }
    pub fn with_penalties(mut self, penalties: Option<&'a Penalties>) -> Self {
        self.penalties = penalties;
        self
    }
    pub fn with_features(mut self, features: Option<&'a FeatureViews<'a>>) -> Self {
        self.features = features;
        self
    }

    /// Adds `value` (a scalar, already weighted) to the training objective
    /// when this is a training pass that collects penalties; otherwise the
    /// term is dropped (evaluation has no objective).
    pub fn add_penalty(&self, name: impl Into<String>, value: Tensor) -> Result<()> {
        let Some(sink) = self.penalties.filter(|_| self.train) else {
            return Ok(());
        };
        if value.elem_count() != 1 {
            return Err(Error::Input(format!(
                "penalty `{}` must be a scalar, got shape {:?}",
                name.into(),
                value.dims()
            )));
        }
        let value = value.flatten_all()?.squeeze(0)?;
        let mut terms = sink.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        terms.push(Penalty {
            name: name.into(),
            value,
        });
        Ok(())
    }

    /// The feature views, or an error naming `what` needs them.
    pub fn views(&self, what: &str) -> Result<&'a FeatureViews<'a>> {
        self.features.ok_or_else(|| {
            Error::Input(format!(
                "`{what}` reads features itself, but the forward pass has no feature views"
            ))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Penalties are kept in a training pass that collects them, dropped in
    /// evaluation or without a sink, and must be scalars.
    #[test]
    fn penalties_are_collected_only_in_training() {
        let dev = Device::Cpu;
        let sink = Penalties::default();
        let two = Tensor::new(&[2f32], &dev).unwrap();
        ForwardCtx::train()
            .with_penalties(Some(&sink))
            .add_penalty("a", two.clone())
            .unwrap();
        ForwardCtx::eval()
            .with_penalties(Some(&sink))
            .add_penalty("b", two.clone())
            .unwrap();
        ForwardCtx::train().add_penalty("c", two.clone()).unwrap();
        let err = ForwardCtx::train()
            .with_penalties(Some(&sink))
            .add_penalty("d", Tensor::new(&[1f32, 2.], &dev).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`d`") && err.contains("scalar"), "{err}");
        let terms = sink.into_inner();
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].name, "a");
        assert_eq!(terms[0].value.dims(), &[] as &[usize]);
        assert_eq!(terms[0].value.to_scalar::<f32>().unwrap(), 2.0);
    }

    #[test]
    fn sorting_by_domain_is_stable_and_inverted_by_the_inverse() {
        let dev = Device::Cpu;
        let sparse = Tensor::new(&[[10u32, 11], [20, 21], [30, 31], [40, 41], [50, 51]], &dev).unwrap();
        let dense = Tensor::new(&[[1f32], [2.], [3.], [4.], [5.]], &dev).unwrap();
        let domains = Domains::new(vec![2, 0, 1, 0, 2], 3, &dev).unwrap();
        let seq = SequenceInput::new(
            Tensor::zeros((5, 4), candle_core::DType::U32, &dev).unwrap(),
            vec![0, 1, 2, 3, 4],
        )
        .unwrap();
        let inputs = Inputs::new(Some(sparse), Some(dense.clone()), Some(domains))
            .unwrap()
            .with_sequences(vec![seq])
            .unwrap();
        let (sorted, inverse) = inputs.sorted_by_domain().unwrap().unwrap();
        // Domain 0 (rows 1, 3), then 1 (row 2), then 2 (rows 0, 4).
        assert_eq!(sorted.domains.as_ref().unwrap().ids(), [0, 0, 1, 2, 2]);
        let d: Vec<f32> = sorted.dense.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(d, [2., 4., 3., 1., 5.]);
        let s: Vec<Vec<u32>> = sorted.sparse.as_ref().unwrap().to_vec2().unwrap();
        assert_eq!(s[0], [20, 21]);
        assert_eq!(s[4], [50, 51]);
        assert_eq!(sorted.sequences[0].lengths, [1, 3, 2, 0, 4]);
        let back = sorted.dense.unwrap().index_select(&inverse, 0).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), dense.to_vec2::<f32>().unwrap());

        // Already sorted, or no domains: nothing to do.
        let one = Inputs::new(
            None,
            Some(dense),
            Some(Domains::new(vec![0, 0, 1, 1, 2], 3, &dev).unwrap()),
        )
        .unwrap();
        assert!(one.sorted_by_domain().unwrap().is_none());
    }
}
