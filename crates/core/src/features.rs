//! The model's input layer: sparse ids -> embeddings, concatenated with the
//! dense features into the `[B, width]` vector that graph node `input` names.

use std::collections::BTreeMap;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inputs::Inputs;
use crate::params::{Init, ParamBuilder};

/// A categorical field after vocabulary mapping: ids in `0..vocab`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseFeature {
    pub name: String,
    pub vocab: usize,
    pub dim: usize,
}

/// What the input layer reads, in batch column order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    #[serde(default)]
    pub sparse: Vec<SparseFeature>,
    /// Dense (numeric) feature names, in column order.
    #[serde(default)]
    pub dense: Vec<String>,
}

impl FeatureSpec {
    pub fn dense_only(names: Vec<String>) -> Self {
        Self {
            sparse: Vec::new(),
            dense: names,
        }
    }

    /// Width of the model input: all embeddings plus the dense features.
    pub fn width(&self) -> usize {
        self.sparse.iter().map(|f| f.dim).sum::<usize>() + self.dense.len()
    }
}

/// Fields of one embedding width share one table (one `index_select` for all
/// of them); each field owns a row range `offset..offset + vocab`. Ids must be
/// below their field's vocabulary (`mtrec_data::Dataset::new` guarantees it):
/// a larger id would read another field's rows.
struct Group {
    /// Column positions of the group's fields in the batch's sparse ids.
    columns: Tensor,
    offsets: Tensor,
    table: Tensor,
    fields: usize,
    dim: usize,
    identity: bool,
}

pub struct FeatureInput {
    spec: FeatureSpec,
    groups: Vec<Group>,
}

impl std::fmt::Debug for FeatureInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureInput").field("spec", &self.spec).finish()
    }
}

impl FeatureInput {
    /// Embedding tables start at `U(-0.05, 0.05)`: candle's N(0, 1) default is
    /// far too large for recommender embeddings.
    pub fn new(spec: &FeatureSpec, pb: &ParamBuilder) -> Result<Self> {
        let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in spec.sparse.iter().enumerate() {
            if f.vocab == 0 || f.dim == 0 {
                return Err(Error::Input(format!(
                    "sparse feature `{}` needs vocab >= 1 and dim >= 1 (got {} and {})",
                    f.name, f.vocab, f.dim
                )));
            }
            by_dim.entry(f.dim).or_default().push(i);
        }
        let dev = pb.device();
        let mut groups = Vec::new();
        for (dim, fields) in by_dim {
            let mut offsets = Vec::with_capacity(fields.len());
            let mut rows = 0u32;
            for &i in &fields {
                offsets.push(rows);
                rows += spec.sparse[i].vocab as u32;
            }
            let table = pb.pp("embedding").get(
                &format!("dim{dim}"),
                &[rows as usize, dim],
                Init::Uniform { lo: -0.05, hi: 0.05 },
            )?;
            let identity = fields.iter().enumerate().all(|(k, &i)| k == i) && fields.len() == spec.sparse.len();
            let cols: Vec<u32> = fields.iter().map(|&i| i as u32).collect();
            groups.push(Group {
                columns: Tensor::new(cols.as_slice(), dev)?,
                offsets: Tensor::new(offsets.as_slice(), dev)?.unsqueeze(0)?,
                table,
                fields: fields.len(),
                dim,
                identity,
            });
        }
        Ok(Self {
            spec: spec.clone(),
            groups,
        })
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// One fused op when every sparse field shares one table (one embedding
    /// width) and the fused ops are on: the gather, the concatenation with
    /// the dense features and their backward in one (see
    /// [`crate::ops::embed_concat`]). `None`: take the plain path.
    fn forward_fused(&self, inputs: &Inputs) -> Result<Option<Tensor>> {
        let ([g], Some(ids)) = (self.groups.as_slice(), inputs.sparse.as_ref()) else {
            return Ok(None);
        };
        let dense = if self.spec.dense.is_empty() {
            None
        } else {
            inputs.dense.as_ref()
        };
        if !g.identity
            || (dense.is_none() && !self.spec.dense.is_empty())
            || !crate::ops::embed_fusable(&g.table, dense)
        {
            return Ok(None);
        }
        let (_, f) = ids.dims2()?;
        if ids.dtype() != candle_core::DType::U32
            || f != self.spec.sparse.len()
            || dense.is_some_and(|d| d.dim(D::Minus1).ok() != Some(self.spec.dense.len()))
        {
            return Ok(None); // the plain path names the mismatch
        }
        let mut rows = ids.flatten_all()?.to_vec1::<u32>()?;
        let offsets = g.offsets.flatten_all()?.to_vec1::<u32>()?;
        for chunk in rows.chunks_exact_mut(f) {
            for (id, off) in chunk.iter_mut().zip(&offsets) {
                // An id past its field's vocabulary is caught by the op's
                // bounds check (or reads another field's rows, as on the
                // plain path; `Dataset::new` rules both out).
                *id = id.saturating_add(*off);
            }
        }
        Ok(Some(crate::ops::embed_concat(&g.table, rows, f, dense)?))
    }

    pub fn forward(&self, inputs: &Inputs) -> Result<Tensor> {
        let b = inputs.rows();
        if let Some(x) = self.forward_fused(inputs)? {
            return Ok(x);
        }
        let mut parts = Vec::with_capacity(self.groups.len() + 1);
        if !self.groups.is_empty() {
            let ids = inputs
                .sparse
                .as_ref()
                .ok_or_else(|| Error::Input("the model has sparse features but the batch has no sparse ids".into()))?;
            let (_, f) = ids.dims2()?;
            if f != self.spec.sparse.len() {
                return Err(Error::Input(format!(
                    "the batch has {f} sparse columns, the model expects {}",
                    self.spec.sparse.len()
                )));
            }
            for g in &self.groups {
                let cols = if g.identity {
                    ids.clone()
                } else {
                    ids.index_select(&g.columns, 1)?
                };
                let rows = cols.broadcast_add(&g.offsets)?.flatten_all()?;
                let emb = g.table.index_select(&rows, 0)?;
                parts.push(emb.reshape((b, g.fields * g.dim))?);
            }
        }
        if !self.spec.dense.is_empty() {
            let dense = inputs
                .dense
                .as_ref()
                .ok_or_else(|| Error::Input("the model has dense features but the batch has none".into()))?;
            let n = dense.dim(D::Minus1)?;
            if n != self.spec.dense.len() {
                return Err(Error::Input(format!(
                    "the batch has {n} dense columns, the model expects {}",
                    self.spec.dense.len()
                )));
            }
            parts.push(dense.clone());
        }
        match parts.len() {
            0 => Err(Error::Input("the model has no input features".into())),
            1 => Ok(parts.remove(0)),
            _ => Ok(Tensor::cat(&parts, 1)?),
        }
    }
}
