//! The model's input layer: sparse ids -> embeddings, pooled sequences, an
//! optional domain embedding and the dense features, concatenated into the
//! `[B, width]` vector that graph node `input` names; and [`FeatureViews`],
//! the per-feature embeddings (sequences position by position, with their
//! mask) for the components that read features themselves (attention over a
//! behaviour sequence, a debias network over a few features).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
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

/// How a sequence's per-position embeddings become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the real positions (an empty sequence pools to zeros).
    #[default]
    Mean,
    /// Sum over the real positions.
    Sum,
}

/// A list-valued field (e.g. the last items a user clicked): per row up to
/// `max_len` ids in `0..vocab`, padded with 0, and a length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceFeature {
    pub name: String,
    pub max_len: usize,
    /// Vocabulary of the ids (the shared field's when `share_with` is set).
    pub vocab: usize,
    /// Embedding width (the shared field's when `share_with` is set).
    pub dim: usize,
    #[serde(default)]
    pub pooling: Pooling,
    /// The sparse field whose embedding table the sequence reads: the same
    /// item has the same embedding as a target and inside a history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_with: Option<String>,
}

/// The domain id of every row embedded into the model input (so that models
/// without domain-specific parameters can tell domains apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEmbedding {
    /// Number of domains of the data.
    pub count: usize,
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
    /// Sequence features, in the batch's sequence order; pooled into the
    /// input (unless listed in `side`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<SequenceFeature>,
    /// Names of features (sparse, dense or sequence) that are embedded and
    /// readable through [`FeatureViews`] but left out of the model input:
    /// what an architecture reads itself (e.g. SAR-Net's debias features,
    /// which must never reach the serving path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side: Vec<String>,
    /// Append an embedding of the row's domain id to the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainEmbedding>,
}

impl FeatureSpec {
    pub fn dense_only(names: Vec<String>) -> Self {
        Self {
            dense: names,
            ..Self::default()
        }
    }

    fn in_input(&self, name: &str) -> bool {
        !self.side.iter().any(|s| s == name)
    }

    /// Width of the model input: the embeddings of the sparse fields and
    /// pooled sequences, the domain embedding, then the dense features
    /// (features in `side` excluded).
    pub fn width(&self) -> usize {
        self.sparse
            .iter()
            .filter(|f| self.in_input(&f.name))
            .map(|f| f.dim)
            .sum::<usize>()
            + self
                .sequences
                .iter()
                .filter(|q| self.in_input(&q.name))
                .map(|q| q.dim)
                .sum::<usize>()
            + self.domain.map_or(0, |d| d.dim)
            + self.dense.iter().filter(|n| self.in_input(n)).count()
    }

    /// The sparse field `name`.
    pub fn sparse_field(&self, name: &str) -> Option<&SparseFeature> {
        self.sparse.iter().find(|f| f.name == name)
    }

    /// The sequence `name`.
    pub fn sequence(&self, name: &str) -> Option<&SequenceFeature> {
        self.sequences.iter().find(|q| q.name == name)
    }

    /// The width `name` has when read through [`FeatureViews::feature`]:
    /// its embedding width (sparse), 1 (dense), `None` if there is no such
    /// sparse or dense feature.
    pub fn feature_width(&self, name: &str) -> Option<usize> {
        match self.sparse_field(name) {
            Some(f) => Some(f.dim),
            None => self.dense.iter().any(|n| n == name).then_some(1),
        }
    }

    /// Checks that the names are unique, the sizes positive, the shared
    /// fields exist with the sequence's width and vocabulary, and every name
    /// in `side` exists.
    pub fn check(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        let all = self
            .sparse
            .iter()
            .map(|f| f.name.as_str())
            .chain(self.dense.iter().map(String::as_str))
            .chain(self.sequences.iter().map(|q| q.name.as_str()));
        for n in all {
            if !names.insert(n) {
                return Err(Error::Input(format!("feature `{n}` is declared twice")));
            }
        }
        for f in &self.sparse {
            if f.vocab == 0 || f.dim == 0 {
                return Err(Error::Input(format!(
                    "sparse feature `{}` needs vocab >= 1 and dim >= 1 (got {} and {})",
                    f.name, f.vocab, f.dim
                )));
            }
        }
        for q in &self.sequences {
            if q.vocab == 0 || q.dim == 0 || q.max_len == 0 {
                return Err(Error::Input(format!(
                    "sequence `{}` needs vocab, dim and max_len >= 1 (got {}, {} and {})",
                    q.name, q.vocab, q.dim, q.max_len
                )));
            }
            if let Some(s) = &q.share_with {
                let f = self.sparse_field(s).ok_or_else(|| {
                    Error::Input(format!(
                        "sequence `{}` shares the table of `{s}`, which is no sparse field",
                        q.name
                    ))
                })?;
                if f.dim != q.dim || f.vocab < q.vocab {
                    return Err(Error::Input(format!(
                        "sequence `{}` (vocab {}, dim {}) cannot share the table of `{s}` (vocab {}, dim {})",
                        q.name, q.vocab, q.dim, f.vocab, f.dim
                    )));
                }
            }
        }
        if let Some(d) = &self.domain {
            if d.count == 0 || d.dim == 0 {
                return Err(Error::Input(format!(
                    "the domain embedding needs domains and dim >= 1 (got {} and {})",
                    d.count, d.dim
                )));
            }
        }
        if let Some(s) = self.side.iter().find(|s| !names.contains(s.as_str())) {
            return Err(Error::Input(format!(
                "side feature `{s}` is no sparse, dense or sequence feature"
            )));
        }
        Ok(())
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
    /// Host copy of `offsets` (for sequences sharing a field's rows).
    host_offsets: Vec<u32>,
    table: Tensor,
    dim: usize,
    identity: bool,
    /// Positions (within the group) of the fields that enter the model input,
    /// when some are side features; `None`: all of them.
    keep: Option<(Tensor, usize)>,
}

/// Where a sequence's embeddings come from: a table and the row offset of
/// its ids in it.
struct SequenceTable {
    table: Tensor,
    offset: u32,
}

pub struct FeatureInput {
    spec: FeatureSpec,
    groups: Vec<Group>,
    /// Per sparse field: (group, position in the group).
    field_slots: Vec<(usize, usize)>,
    sequences: Vec<SequenceTable>,
    domain: Option<Tensor>,
    /// Positions of the dense columns that enter the input, when some are
    /// side features.
    dense_keep: Option<Tensor>,
}

impl std::fmt::Debug for FeatureInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureInput").field("spec", &self.spec).finish()
    }
}

/// One sequence of one batch, position by position.
#[derive(Clone, Debug)]
pub struct SequenceView {
    /// `[B, L, d]`; padded positions hold the embedding of id 0 (mask them).
    pub embeddings: Tensor,
    /// `[B, L]` `f32`: 1 at the real positions, 0 at the padding.
    pub mask: Tensor,
}

/// The features of one batch, one by one, for components that read features
/// themselves (through `ForwardCtx::features`): sparse embeddings, dense
/// columns and sequences, side features included.
#[derive(Debug)]
pub struct FeatureViews<'a> {
    input: &'a FeatureInput,
    inputs: &'a Inputs,
    sequences: Vec<SequenceView>,
}

impl FeatureViews<'_> {
    pub fn spec(&self) -> &FeatureSpec {
        &self.input.spec
    }

    /// The sequence `name`: `[B, L, d]` embeddings and `[B, L]` mask.
    pub fn sequence(&self, name: &str) -> Result<&SequenceView> {
        self.input
            .spec
            .sequences
            .iter()
            .position(|q| q.name == name)
            .and_then(|i| self.sequences.get(i))
            .ok_or_else(|| Error::Input(format!("the model has no sequence feature `{name}`")))
    }

    /// Sparse field or dense column `name` as `[B, w]`: its embedding
    /// (sparse) or its value (`w = 1`, dense).
    pub fn feature(&self, name: &str) -> Result<Tensor> {
        let spec = &self.input.spec;
        if let Some(i) = spec.sparse.iter().position(|f| f.name == name) {
            let ids =
                self.inputs.sparse.as_ref().ok_or_else(|| {
                    Error::Input("the model has sparse features but the batch has no sparse ids".into())
                })?;
            let (g, pos) = self.input.field_slots[i];
            let g = &self.input.groups[g];
            let rows = (ids.narrow(1, i, 1)?.squeeze(1)? + f64::from(g.host_offsets[pos]))?;
            return Ok(g.table.index_select(&rows, 0)?);
        }
        if let Some(j) = spec.dense.iter().position(|n| n == name) {
            let dense = self
                .inputs
                .dense
                .as_ref()
                .ok_or_else(|| Error::Input("the model has dense features but the batch has none".into()))?;
            // Contiguous: later row gathers (`index_select`) need it.
            return Ok(dense.narrow(1, j, 1)?.contiguous()?);
        }
        Err(Error::Input(format!(
            "the model has no sparse or dense feature `{name}`"
        )))
    }

    /// [`FeatureViews::feature`] of each name, concatenated: `[B, sum w]`.
    pub fn features(&self, names: &[String]) -> Result<Tensor> {
        let parts = names.iter().map(|n| self.feature(n)).collect::<Result<Vec<_>>>()?;
        match parts.len() {
            0 => Err(Error::Input("no features named".into())),
            1 => Ok(parts[0].clone()),
            _ => Ok(Tensor::cat(&parts, 1)?),
        }
    }
}

/// Masked pooling of `[B, L, d]` embeddings: the sum over the real
/// positions, or that sum over the length. An empty sequence gives zeros
/// (the divisor is at least 1), never NaN.
pub fn pool(view: &SequenceView, lengths: &[u32], pooling: Pooling) -> Result<Tensor> {
    let summed = view.embeddings.broadcast_mul(&view.mask.unsqueeze(2)?)?.sum(1)?;
    match pooling {
        Pooling::Sum => Ok(summed),
        Pooling::Mean => {
            let inv: Vec<f32> = lengths.iter().map(|&n| 1.0 / n.max(1) as f32).collect();
            let inv = Tensor::from_vec(inv, (lengths.len(), 1), summed.device())?;
            Ok(summed.broadcast_mul(&inv)?)
        }
    }
}

impl FeatureInput {
    /// Embedding tables start at `U(-0.05, 0.05)`: candle's N(0, 1) default is
    /// far too large for recommender embeddings. Tables are drawn in a fixed
    /// order: sparse tables by width, then each unshared sequence's table,
    /// then the domain table (so models without sequences or a domain
    /// embedding start as before they existed).
    pub fn new(spec: &FeatureSpec, pb: &ParamBuilder) -> Result<Self> {
        spec.check()?;
        let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in spec.sparse.iter().enumerate() {
            by_dim.entry(f.dim).or_default().push(i);
        }
        let dev = pb.device();
        let mut groups = Vec::new();
        let mut field_slots = vec![(0, 0); spec.sparse.len()];
        for (dim, fields) in by_dim {
            let mut offsets = Vec::with_capacity(fields.len());
            let mut rows = 0u32;
            for (pos, &i) in fields.iter().enumerate() {
                offsets.push(rows);
                rows += spec.sparse[i].vocab as u32;
                field_slots[i] = (groups.len(), pos);
            }
            let table = pb.pp("embedding").get(
                &format!("dim{dim}"),
                &[rows as usize, dim],
                Init::Uniform { lo: -0.05, hi: 0.05 },
            )?;
            let identity = fields.iter().enumerate().all(|(k, &i)| k == i) && fields.len() == spec.sparse.len();
            let cols: Vec<u32> = fields.iter().map(|&i| i as u32).collect();
            let kept: Vec<u32> = fields
                .iter()
                .enumerate()
                .filter(|(_, &i)| spec.in_input(&spec.sparse[i].name))
                .map(|(pos, _)| pos as u32)
                .collect();
            let keep = if kept.len() == fields.len() {
                None
            } else {
                Some((Tensor::new(kept.as_slice(), dev)?, kept.len()))
            };
            groups.push(Group {
                columns: Tensor::new(cols.as_slice(), dev)?,
                offsets: Tensor::new(offsets.as_slice(), dev)?.unsqueeze(0)?,
                host_offsets: offsets,
                table,
                dim,
                identity,
                keep,
            });
        }
        let mut sequences = Vec::with_capacity(spec.sequences.len());
        for q in &spec.sequences {
            sequences.push(match &q.share_with {
                Some(field) => {
                    let i = spec.sparse.iter().position(|f| &f.name == field).ok_or_else(|| {
                        Error::Input(format!(
                            "sequence `{}` shares `{field}`, which is no sparse field",
                            q.name
                        ))
                    })?;
                    let (g, pos) = field_slots[i];
                    SequenceTable {
                        table: groups[g].table.clone(),
                        offset: groups[g].host_offsets[pos],
                    }
                }
                None => SequenceTable {
                    table: pb
                        .pp("sequence")
                        .get(&q.name, &[q.vocab, q.dim], Init::Uniform { lo: -0.05, hi: 0.05 })?,
                    offset: 0,
                },
            });
        }
        let domain = match &spec.domain {
            Some(d) => Some(pb.get("domain", &[d.count, d.dim], Init::Uniform { lo: -0.05, hi: 0.05 })?),
            None => None,
        };
        let dense_kept: Vec<u32> = spec
            .dense
            .iter()
            .enumerate()
            .filter(|(_, n)| spec.in_input(n))
            .map(|(j, _)| j as u32)
            .collect();
        let dense_keep = if dense_kept.len() == spec.dense.len() {
            None
        } else {
            Some(Tensor::new(dense_kept.as_slice(), dev)?)
        };
        Ok(Self {
            spec: spec.clone(),
            groups,
            field_slots,
            sequences,
            domain,
            dense_keep,
        })
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// The dense columns that enter the input: all of them, or the ones not
    /// in `side`; `None` when the model has none.
    fn input_dense<'t>(&self, inputs: &'t Inputs) -> Result<Option<std::borrow::Cow<'t, Tensor>>> {
        if self.spec.dense.is_empty() {
            return Ok(None);
        }
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
        Ok(Some(match &self.dense_keep {
            None => std::borrow::Cow::Borrowed(dense),
            Some(k) if k.dim(0)? == 0 => return Ok(None),
            Some(k) => std::borrow::Cow::Owned(dense.index_select(k, 1)?),
        }))
    }

    /// One fused op when every sparse field shares one table (one embedding
    /// width), none is a side feature, and the fused ops are on: the gather,
    /// the concatenation with the dense features and their backward in one
    /// (see [`crate::ops::embed_concat`]). `None`: take the plain path.
    fn forward_fused(&self, inputs: &Inputs) -> Result<Option<Tensor>> {
        let ([g], Some(ids)) = (self.groups.as_slice(), inputs.sparse.as_ref()) else {
            return Ok(None);
        };
        if g.keep.is_some() || self.dense_keep.is_some() {
            return Ok(None);
        }
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
        if ids.dtype() != DType::U32
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

    /// The sparse embeddings then the dense columns (side features left out).
    fn forward_flat(&self, inputs: &Inputs) -> Result<Vec<Tensor>> {
        if let Some(x) = self.forward_fused(inputs)? {
            return Ok(vec![x]);
        }
        let b = inputs.rows();
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
                let cols = match &g.keep {
                    None => cols,
                    Some((_, 0)) => continue,
                    Some((k, _)) => cols.index_select(k, 1)?,
                };
                let offsets = match &g.keep {
                    None => g.offsets.clone(),
                    Some((k, _)) => g.offsets.index_select(k, 1)?,
                };
                let n = cols.dim(1)?;
                let rows = cols.broadcast_add(&offsets)?.flatten_all()?;
                let emb = g.table.index_select(&rows, 0)?;
                parts.push(emb.reshape((b, n * g.dim))?);
            }
        }
        if let Some(d) = self.input_dense(inputs)? {
            parts.push(d.into_owned());
        }
        Ok(parts)
    }

    /// The per-position embeddings and mask of every sequence of the batch.
    fn sequence_views(&self, inputs: &Inputs) -> Result<Vec<SequenceView>> {
        if inputs.sequences.len() != self.spec.sequences.len() {
            return Err(Error::Input(format!(
                "the batch has {} sequence columns, the model expects {} ({})",
                inputs.sequences.len(),
                self.spec.sequences.len(),
                self.spec
                    .sequences
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let b = inputs.rows();
        self.spec
            .sequences
            .iter()
            .zip(&inputs.sequences)
            .zip(&self.sequences)
            .map(|((q, s), t)| {
                let (_, l) = s.ids.dims2()?;
                if l != q.max_len {
                    return Err(Error::Input(format!(
                        "sequence `{}` has {l} positions in the batch, the model expects {}",
                        q.name, q.max_len
                    )));
                }
                let mut rows = s.ids.flatten_all()?;
                if t.offset != 0 {
                    rows = (rows + f64::from(t.offset))?;
                }
                let embeddings = t.table.index_select(&rows, 0)?.reshape((b, l, q.dim))?;
                Ok(SequenceView {
                    embeddings,
                    mask: s.mask()?,
                })
            })
            .collect()
    }

    /// The model input `[B, width]`: sparse embeddings (grouped by width),
    /// dense columns, pooled sequences, domain embedding.
    pub fn forward(&self, inputs: &Inputs) -> Result<Tensor> {
        Ok(self.forward_with_views(inputs)?.0)
    }

    /// [`FeatureInput::forward`] and the batch's [`FeatureViews`].
    pub fn forward_with_views<'a>(&'a self, inputs: &'a Inputs) -> Result<(Tensor, FeatureViews<'a>)> {
        let mut parts = self.forward_flat(inputs)?;
        let sequences = self.sequence_views(inputs)?;
        for ((q, view), s) in self.spec.sequences.iter().zip(&sequences).zip(&inputs.sequences) {
            if self.spec.in_input(&q.name) {
                parts.push(pool(view, &s.lengths, q.pooling)?);
            }
        }
        if let Some(table) = &self.domain {
            let d = inputs
                .domains
                .as_ref()
                .ok_or_else(|| Error::Input("the model embeds the domain id, but the batch has no domains".into()))?;
            parts.push(table.index_select(d.tensor(), 0)?);
        }
        let x = match parts.len() {
            0 => return Err(Error::Input("the model has no input features".into())),
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 1)?,
        };
        Ok((
            x,
            FeatureViews {
                input: self,
                inputs,
                sequences,
            },
        ))
    }
}
