//! The model's input layer: sparse ids -> embeddings, pooled sequences, an
//! optional domain embedding and the dense features, concatenated into the
//! `[B, width]` vector that graph node `input` names; and [`FeatureViews`],
//! the per-feature embeddings (sequences position by position, with their
//! mask) for the components that read features themselves (attention over a
//! behaviour sequence, a debias network over a few features).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, D};
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

/// One embedding table of the input layer, `[rows, dim]`: a row-sparse
/// table of the [`ParamStore`](crate::ParamStore).
struct Table {
    /// The parameter name (the safetensors key and the optimizer's key).
    name: String,
    var: Var,
    rows: usize,
    dim: usize,
}

/// One feature's rows in an embedding table ([`FeatureInput::field_rows`]):
/// ids `0..rows` of the feature are rows `offset..offset + rows` of `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRows {
    pub table: String,
    pub feature: String,
    pub offset: usize,
    pub rows: usize,
}

/// Fields of one embedding width share one table (one gather for all of
/// them); each field owns a row range `offset..offset + vocab`. An id at or
/// past its field's vocabulary is an error naming the field (it would read
/// another field's rows).
struct Group {
    /// Index of the group's table in `FeatureInput::tables`.
    table: usize,
    /// The group's fields (indices into `FeatureSpec::sparse`, i.e. batch
    /// columns), increasing.
    fields: Vec<usize>,
    offsets: Vec<u32>,
    dim: usize,
    /// Positions (within the group) of the fields that enter the model input.
    kept: Vec<usize>,
}

/// Where a sequence's embeddings come from: a table and the row offset of
/// its ids in it.
struct SequenceTable {
    table: usize,
    offset: u32,
}

/// The model's input layer: embedding tables, their field layout, and the
/// dense and sequence columns that enter the input.
pub struct FeatureInput {
    spec: FeatureSpec,
    tables: Vec<Table>,
    groups: Vec<Group>,
    /// Per sparse field: (group, position in the group).
    field_slots: Vec<(usize, usize)>,
    sequences: Vec<SequenceTable>,
    /// Index of the domain embedding's table.
    domain: Option<usize>,
    /// Positions of the dense columns that enter the input, when some are
    /// side features.
    dense_keep: Option<Tensor>,
}

impl std::fmt::Debug for FeatureInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureInput").field("spec", &self.spec).finish()
    }
}

/// The rows of one embedding table that a training pass read.
///
/// A training pass never reads a table whole: it copies the rows its batch
/// touches (unique, sorted) into `values`, a small variable, and looks ids up
/// in that copy. The gradient of `values` is therefore the table's
/// row-sparse gradient: row `i` is the summed gradient of table row
/// `rows[i]` (over every field, sequence position and row of the batch that
/// read it), and no table-sized buffer exists at any point. The optimizer
/// writes the updated rows back into the table.
#[derive(Clone, Debug)]
pub struct TouchedRows {
    /// The table's parameter name ([`ParamStore::tables`](crate::ParamStore::tables)).
    pub table: String,
    /// The table rows read, unique and increasing.
    pub rows: Vec<u32>,
    /// `[rows.len(), dim]`: the rows' values at the time of the pass.
    pub values: Var,
}

/// One batch's lookups: per table, the tensor its ids index (the table
/// itself when evaluating, the touched rows' copy when training) and the
/// ids of every use, already mapped into that tensor.
struct Lookup {
    sources: Vec<Tensor>,
    /// Per group: `[B, fields]` row-major.
    group_rows: Vec<Vec<u32>>,
    /// Per sequence: `[B, L]` row-major.
    sequence_rows: Vec<Vec<u32>>,
    domain_rows: Option<Vec<u32>>,
    touched: Vec<TouchedRows>,
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
    lookup: Lookup,
    sequences: Vec<SequenceView>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup").field("touched", &self.touched.len()).finish()
    }
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
            let (g, pos) = self.input.field_slots[i];
            let group = &self.input.groups[g];
            let n = group.fields.len();
            let rows: Vec<u32> = self.lookup.group_rows[g].iter().skip(pos).step_by(n).copied().collect();
            let rows = Tensor::from_vec(rows, self.inputs.rows(), self.input.device())?;
            return Ok(self.lookup.sources[group.table].index_select(&rows, 0)?);
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

    /// The table rows this (training) pass read, to hand to the optimizer
    /// with their gradients; empty when evaluating.
    pub fn into_touched(self) -> Vec<TouchedRows> {
        self.lookup.touched
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

/// The ids of a `[B, n]` `u32` tensor on the host, row-major.
fn host_ids(t: &Tensor, what: &str) -> Result<Vec<u32>> {
    if t.dtype() != DType::U32 {
        return Err(Error::Input(format!("{what} must be u32 ids, got {:?}", t.dtype())));
    }
    Ok(t.flatten_all()?.to_vec1::<u32>()?)
}

/// Maps every row of `uses` to its index among the unique rows (sorted),
/// which it returns: the working set of one table for one batch.
fn unique_rows(uses: &mut [&mut Vec<u32>]) -> Vec<u32> {
    let mut unique: Vec<u32> = uses.iter().flat_map(|u| u.iter().copied()).collect();
    unique.sort_unstable();
    unique.dedup();
    for rows in uses.iter_mut() {
        for r in rows.iter_mut() {
            // Present by construction: `unique` holds every row of `uses`.
            *r = unique.partition_point(|&u| u < *r) as u32;
        }
    }
    unique
}

impl FeatureInput {
    /// Embedding tables start at `U(-0.05, 0.05)`: candle's N(0, 1) default is
    /// far too large for recommender embeddings. Tables are drawn in a fixed
    /// order: sparse tables by width, then each unshared sequence's table,
    /// then the domain table (so models without sequences or a domain
    /// embedding start as before they existed).
    pub fn new(spec: &FeatureSpec, pb: &ParamBuilder) -> Result<Self> {
        spec.check()?;
        let init = Init::Uniform { lo: -0.05, hi: 0.05 };
        let mut tables = Vec::new();
        let mut add_table = |pb: &ParamBuilder, name: &str, rows: usize, dim: usize| -> Result<usize> {
            let var = pb.table(name, rows, dim, init)?;
            tables.push(Table {
                name: pb.path(name),
                var,
                rows,
                dim,
            });
            Ok(tables.len() - 1)
        };
        let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in spec.sparse.iter().enumerate() {
            by_dim.entry(f.dim).or_default().push(i);
        }
        let mut groups = Vec::new();
        let mut field_slots = vec![(0, 0); spec.sparse.len()];
        for (dim, fields) in by_dim {
            let mut offsets = Vec::with_capacity(fields.len());
            let mut rows = 0usize;
            for (pos, &i) in fields.iter().enumerate() {
                offsets.push(u32::try_from(rows).map_err(|_| too_many_rows(dim))?);
                rows += spec.sparse[i].vocab;
                field_slots[i] = (groups.len(), pos);
            }
            u32::try_from(rows).map_err(|_| too_many_rows(dim))?;
            let table = add_table(&pb.pp("embedding"), &format!("dim{dim}"), rows, dim)?;
            let kept = fields
                .iter()
                .enumerate()
                .filter(|(_, &i)| spec.in_input(&spec.sparse[i].name))
                .map(|(pos, _)| pos)
                .collect();
            groups.push(Group {
                table,
                fields,
                offsets,
                dim,
                kept,
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
                        table: groups[g].table,
                        offset: groups[g].offsets[pos],
                    }
                }
                None => SequenceTable {
                    table: add_table(&pb.pp("sequence"), &q.name, q.vocab, q.dim)?,
                    offset: 0,
                },
            });
        }
        let domain = match &spec.domain {
            Some(d) => Some(add_table(pb, "domain", d.count, d.dim)?),
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
            Some(Tensor::new(dense_kept.as_slice(), pb.device())?)
        };
        Ok(Self {
            spec: spec.clone(),
            tables,
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

    fn device(&self) -> &candle_core::Device {
        self.tables
            .first()
            .map_or(&candle_core::Device::Cpu, |t| t.var.device())
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

    /// Every id of the batch as a row of its table, checked against its
    /// field's vocabulary; when training, the touched rows of each table
    /// copied into a small variable and the ids mapped into it.
    fn lookup(&self, inputs: &Inputs, train: bool) -> Result<Lookup> {
        let b = inputs.rows();
        let mut group_rows = Vec::with_capacity(self.groups.len());
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
            let ids = host_ids(ids, "sparse features")?;
            for g in &self.groups {
                let mut rows = Vec::with_capacity(b * g.fields.len());
                for row in ids.chunks_exact(f) {
                    for (&i, &offset) in g.fields.iter().zip(&g.offsets) {
                        let field = &self.spec.sparse[i];
                        let id = row[i];
                        if id as usize >= field.vocab {
                            return Err(Error::Input(format!(
                                "sparse feature `{}`: id {id} is outside its vocabulary of {} ids",
                                field.name, field.vocab
                            )));
                        }
                        rows.push(id + offset);
                    }
                }
                group_rows.push(rows);
            }
        }
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
        let mut sequence_rows = Vec::with_capacity(self.sequences.len());
        for ((q, s), t) in self.spec.sequences.iter().zip(&inputs.sequences).zip(&self.sequences) {
            let (_, l) = s.ids.dims2()?;
            if l != q.max_len {
                return Err(Error::Input(format!(
                    "sequence `{}` has {l} positions in the batch, the model expects {}",
                    q.name, q.max_len
                )));
            }
            let mut rows = host_ids(&s.ids, "sequence ids")?;
            for id in &mut rows {
                if *id as usize >= q.vocab {
                    return Err(Error::Input(format!(
                        "sequence `{}`: id {id} is outside its vocabulary of {} ids",
                        q.name, q.vocab
                    )));
                }
                *id += t.offset;
            }
            sequence_rows.push(rows);
        }
        let domain_rows = match (&self.domain, &self.spec.domain) {
            (Some(_), Some(spec)) => {
                let d = inputs.domains.as_ref().ok_or_else(|| {
                    Error::Input("the model embeds the domain id, but the batch has no domains".into())
                })?;
                if let Some(bad) = d.ids().iter().find(|&&id| id as usize >= spec.count) {
                    return Err(Error::Input(format!(
                        "domain id {bad} is outside the domain embedding's {} domains",
                        spec.count
                    )));
                }
                Some(d.ids().to_vec())
            }
            _ => None,
        };
        let mut lookup = Lookup {
            sources: Vec::with_capacity(self.tables.len()),
            group_rows,
            sequence_rows,
            domain_rows,
            touched: Vec::new(),
        };
        for (t, table) in self.tables.iter().enumerate() {
            if !train {
                lookup.sources.push(table.var.as_detached_tensor());
                continue;
            }
            let Lookup {
                group_rows,
                sequence_rows,
                domain_rows,
                ..
            } = &mut lookup;
            let mut uses: Vec<&mut Vec<u32>> = Vec::new();
            uses.extend(
                group_rows
                    .iter_mut()
                    .zip(&self.groups)
                    .filter(|(_, g)| g.table == t)
                    .map(|(r, _)| r),
            );
            uses.extend(
                sequence_rows
                    .iter_mut()
                    .zip(&self.sequences)
                    .filter(|(_, s)| s.table == t)
                    .map(|(r, _)| r),
            );
            if self.domain == Some(t) {
                uses.extend(domain_rows.as_mut());
            }
            let rows = unique_rows(&mut uses);
            let index = Tensor::new(rows.as_slice(), table.var.device())?;
            // A copy of the touched rows, owned by a fresh variable: the
            // autograd graph ends there, never at the table.
            let values = Var::from_tensor(&table.var.as_detached_tensor().index_select(&index, 0)?)?;
            debug_assert_eq!(values.dims(), [rows.len(), table.dim]);
            lookup.sources.push(values.as_tensor().clone());
            lookup.touched.push(TouchedRows {
                table: table.name.clone(),
                rows,
                values,
            });
        }
        Ok(lookup)
    }

    /// One fused op when every sparse field shares one table (one embedding
    /// width), none is a side feature, and the fused ops are on: the gather,
    /// the concatenation with the dense features and their backward in one
    /// (see [`crate::ops::embed_concat`]). `None`: take the plain path.
    fn forward_fused(&self, inputs: &Inputs, lookup: &Lookup) -> Result<Option<Tensor>> {
        let ([g], [rows]) = (self.groups.as_slice(), lookup.group_rows.as_slice()) else {
            return Ok(None);
        };
        if g.kept.len() != g.fields.len() || self.dense_keep.is_some() {
            return Ok(None);
        }
        let dense = if self.spec.dense.is_empty() {
            None
        } else {
            inputs.dense.as_ref()
        };
        let table = &lookup.sources[g.table];
        if (dense.is_none() && !self.spec.dense.is_empty()) || !crate::ops::embed_fusable(table, dense) {
            return Ok(None);
        }
        if dense.is_some_and(|d| d.dim(D::Minus1).ok() != Some(self.spec.dense.len())) {
            return Ok(None); // the plain path names the mismatch
        }
        Ok(Some(crate::ops::embed_concat(
            table,
            rows.clone(),
            g.fields.len(),
            dense,
        )?))
    }

    /// The sparse embeddings then the dense columns (side features left out).
    fn forward_flat(&self, inputs: &Inputs, lookup: &Lookup) -> Result<Vec<Tensor>> {
        if let Some(x) = self.forward_fused(inputs, lookup)? {
            return Ok(vec![x]);
        }
        let b = inputs.rows();
        let mut parts = Vec::with_capacity(self.groups.len() + 1);
        for (g, rows) in self.groups.iter().zip(&lookup.group_rows) {
            if g.kept.is_empty() {
                continue;
            }
            let n = g.fields.len();
            let kept: Vec<u32> = if g.kept.len() == n {
                rows.clone()
            } else {
                rows.chunks_exact(n)
                    .flat_map(|row| g.kept.iter().map(move |&p| row[p]))
                    .collect()
            };
            let index = Tensor::from_vec(kept, b * g.kept.len(), self.device())?;
            let emb = lookup.sources[g.table].index_select(&index, 0)?;
            parts.push(emb.reshape((b, g.kept.len() * g.dim))?);
        }
        if let Some(d) = self.input_dense(inputs)? {
            parts.push(d.into_owned());
        }
        Ok(parts)
    }

    /// The per-position embeddings and mask of every sequence of the batch.
    fn sequence_views(&self, inputs: &Inputs, lookup: &Lookup) -> Result<Vec<SequenceView>> {
        let b = inputs.rows();
        self.spec
            .sequences
            .iter()
            .zip(&inputs.sequences)
            .zip(self.sequences.iter().zip(&lookup.sequence_rows))
            .map(|((q, s), (t, rows))| {
                let index = Tensor::new(rows.as_slice(), self.device())?;
                let embeddings = lookup.sources[t.table]
                    .index_select(&index, 0)?
                    .reshape((b, q.max_len, q.dim))?;
                Ok(SequenceView {
                    embeddings,
                    mask: s.mask()?,
                })
            })
            .collect()
    }

    /// The model input `[B, width]` when evaluating: sparse embeddings
    /// (grouped by width), dense columns, pooled sequences, domain embedding.
    pub fn forward(&self, inputs: &Inputs) -> Result<Tensor> {
        Ok(self.forward_with_views(inputs, false)?.0)
    }

    /// The model input and the batch's [`FeatureViews`]. With `train`, the
    /// embeddings are read from a copy of the rows the batch touches, whose
    /// gradients [`FeatureViews::into_touched`] hands over (see
    /// [`TouchedRows`]); else straight from the tables.
    pub fn forward_with_views<'a>(&'a self, inputs: &'a Inputs, train: bool) -> Result<(Tensor, FeatureViews<'a>)> {
        let lookup = self.lookup(inputs, train)?;
        let mut parts = self.forward_flat(inputs, &lookup)?;
        let sequences = self.sequence_views(inputs, &lookup)?;
        for ((q, view), s) in self.spec.sequences.iter().zip(&sequences).zip(&inputs.sequences) {
            if self.spec.in_input(&q.name) {
                parts.push(pool(view, &s.lengths, q.pooling)?);
            }
        }
        if let (Some(t), Some(rows)) = (self.domain, &lookup.domain_rows) {
            let index = Tensor::new(rows.as_slice(), self.device())?;
            parts.push(lookup.sources[t].index_select(&index, 0)?);
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
                lookup,
                sequences,
            },
        ))
    }

    /// The input layer's tables: name, rows, width.
    pub fn tables(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.tables.iter().map(|t| (t.name.as_str(), t.rows, t.dim))
    }

    /// Where every embedded feature's rows sit: per sparse field its row
    /// range of its width's table, per sequence with its own table that
    /// table, and the domain table. A sequence sharing a field's rows is
    /// not listed (its rows are the field's).
    pub fn field_rows(&self) -> Vec<FieldRows> {
        let mut out = Vec::new();
        for g in &self.groups {
            for (&i, &offset) in g.fields.iter().zip(&g.offsets) {
                let f = &self.spec.sparse[i];
                out.push(FieldRows {
                    table: self.tables[g.table].name.clone(),
                    feature: f.name.clone(),
                    offset: offset as usize,
                    rows: f.vocab,
                });
            }
        }
        for (q, t) in self.spec.sequences.iter().zip(&self.sequences) {
            if q.share_with.is_none() {
                out.push(FieldRows {
                    table: self.tables[t.table].name.clone(),
                    feature: q.name.clone(),
                    offset: t.offset as usize,
                    rows: q.vocab,
                });
            }
        }
        if let (Some(t), Some(d)) = (self.domain, &self.spec.domain) {
            out.push(FieldRows {
                table: self.tables[t].name.clone(),
                feature: "domain".into(),
                offset: 0,
                rows: d.count,
            });
        }
        out
    }
}

fn too_many_rows(dim: usize) -> Error {
    Error::Input(format!(
        "the fields of width {dim} have more than 2^32 ids together: give some another embedding width"
    ))
}
