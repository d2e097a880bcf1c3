//! What a model reads for one batch of rows, and the per-forward context.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

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
}

/// One batch of model inputs, columnar.
///
/// - `sparse`: `[B, F]` `u32` ids, one column per sparse field, each already
///   mapped into `0..vocab` of its field (the out-of-vocabulary id included);
/// - `dense`: `[B, N]` `f32` numeric features, already scaled;
/// - `domains`: the row's domain ids where the data has domains.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub sparse: Option<Tensor>,
    pub dense: Option<Tensor>,
    pub domains: Option<Domains>,
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
            rows,
        })
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Passed to every component's forward.
#[derive(Clone, Copy, Debug)]
pub struct ForwardCtx<'a> {
    /// Training mode (batch statistics, training-only branches) or evaluation.
    pub train: bool,
    pub domains: Option<&'a Domains>,
}

impl<'a> ForwardCtx<'a> {
    pub fn eval() -> Self {
        Self {
            train: false,
            domains: None,
        }
    }
    pub fn train() -> Self {
        Self {
            train: true,
            domains: None,
        }
    }
    pub fn with_domains(mut self, domains: Option<&'a Domains>) -> Self {
        self.domains = domains;
        self
    }
}
