//! The model's input layer as ONNX: the encoded inputs the preprocessing
//! produces (graph inputs) to the `[B, width]` vector graph node `input`
//! names, and each feature on its own for the components that read
//! features themselves.
//!
//! The layout is that of `mtrec_core::features::FeatureInput` (whose tables
//! are the model's `features.*` weights): sparse fields grouped by embedding
//! width, one table per width (`features.embedding.dim<d>`, widths
//! ascending), each field owning the row range after the previous fields of
//! its width; a sequence reads its own table `features.sequence.<name>` or,
//! with `share_with`, its field's rows; the domain table
//! `features.domain`. The input is `[sparse embeddings by width | dense |
//! pooled sequences | domain embedding]`, side features left out.
//! `tests/onnxruntime.rs` checks the result against `Model::forward`.

use std::collections::BTreeMap;

use mtrec_core::{FeatureSpec, Pooling};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::ValueInfoProto;

use crate::builder::{value_info, Attr, Builder, Dim, BATCH};
use crate::error::{ExportError, Result};
use crate::weights::Weights;

/// Graph input: sparse ids `[B, F]` int64, one column per sparse field in
/// the preprocessing's order, each already mapped into its vocabulary.
pub const SPARSE: &str = "sparse_ids";
/// Graph input: dense values `[B, N]` float, already scaled.
pub const DENSE: &str = "dense";
/// Graph input: the row's domain id `[B]` int64 (models trained on data with domains).
pub const DOMAIN: &str = "domain";

/// Graph input of sequence `name`'s ids, `[B, L]` int64 (0 past the length).
pub fn sequence_ids(name: &str) -> String {
    format!("sequence.{name}.ids")
}

/// Graph input of sequence `name`'s lengths, `[B]` int64.
pub fn sequence_lengths(name: &str) -> String {
    format!("sequence.{name}.lengths")
}

/// Where a sparse field's embedding is: its table's parameter name, its row
/// offset there, its width.
struct Slot {
    table: String,
    offset: i64,
    dim: usize,
}

pub struct Features {
    spec: FeatureSpec,
    slots: Vec<Slot>,
    /// Per sequence: its table and the row offset of its ids.
    sequences: Vec<(String, i64)>,
    domains: usize,
}

impl Features {
    pub fn new(spec: &FeatureSpec, domains: usize) -> Result<Self> {
        let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in spec.sparse.iter().enumerate() {
            by_dim.entry(f.dim).or_default().push(i);
        }
        let mut slots: Vec<Option<Slot>> = (0..spec.sparse.len()).map(|_| None).collect();
        for (dim, fields) in by_dim {
            let mut offset = 0i64;
            for i in fields {
                slots[i] = Some(Slot {
                    table: format!("features.embedding.dim{dim}"),
                    offset,
                    dim,
                });
                offset += spec.sparse[i].vocab as i64;
            }
        }
        let slots = slots.into_iter().flatten().collect::<Vec<_>>();
        let sequences = spec
            .sequences
            .iter()
            .map(|q| match &q.share_with {
                None => Ok((format!("features.sequence.{}", q.name), 0)),
                Some(field) => {
                    let i = spec.sparse.iter().position(|f| &f.name == field).ok_or_else(|| {
                        ExportError::Core(mtrec_core::Error::Input(format!(
                            "sequence `{}` shares `{field}`, which is no sparse field",
                            q.name
                        )))
                    })?;
                    Ok((slots[i].table.clone(), slots[i].offset))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spec: spec.clone(),
            slots,
            sequences,
            domains,
        })
    }

    /// The graph inputs, in order: sparse ids, dense values, each sequence's
    /// ids and lengths, the domain id; each only where the model has it.
    pub fn inputs(&self) -> Vec<ValueInfoProto> {
        let mut v = Vec::new();
        if !self.spec.sparse.is_empty() {
            v.push(value_info(
                SPARSE,
                DataType::INT64,
                &[BATCH, Dim::Fixed(self.spec.sparse.len())],
            ));
        }
        if !self.spec.dense.is_empty() {
            v.push(value_info(
                DENSE,
                DataType::FLOAT,
                &[BATCH, Dim::Fixed(self.spec.dense.len())],
            ));
        }
        for q in &self.spec.sequences {
            v.push(value_info(
                &sequence_ids(&q.name),
                DataType::INT64,
                &[BATCH, Dim::Fixed(q.max_len)],
            ));
            v.push(value_info(&sequence_lengths(&q.name), DataType::INT64, &[BATCH]));
        }
        if self.domains > 0 {
            v.push(value_info(DOMAIN, DataType::INT64, &[BATCH]));
        }
        v
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    fn in_input(&self, name: &str) -> bool {
        !self.spec.side.iter().any(|s| s == name)
    }

    /// The embeddings of the sparse fields `fields` (indices, all of one
    /// width `dim` and one table), side by side: `[B, fields * dim]`.
    fn embed_fields(&self, b: &mut Builder, w: &mut Weights, fields: &[usize]) -> Result<String> {
        let slot = &self.slots[fields[0]];
        let table = w.use_weight(b, &slot.table)?;
        let cols = b.ints("fields", &[fields.len()], fields.iter().map(|&i| i as i64).collect());
        let ids = b.op("Gather", &[SPARSE, &cols], vec![Attr::Int("axis", 1)], "field_ids");
        let offsets = b.ints(
            "offsets",
            &[fields.len()],
            fields.iter().map(|&i| self.slots[i].offset).collect(),
        );
        let rows = b.op("Add", &[&ids, &offsets], vec![], "table_rows");
        let emb = b.gather_rows(&table, &rows);
        Ok(b.op("Flatten", &[&emb], vec![Attr::Int("axis", 1)], "embeddings"))
    }

    /// Sparse field or dense column `name` as `[B, w]`, like
    /// `FeatureViews::feature`.
    pub fn feature(&self, b: &mut Builder, w: &mut Weights, name: &str) -> Result<String> {
        if let Some(i) = self.spec.sparse.iter().position(|f| f.name == name) {
            return self.embed_fields(b, w, &[i]);
        }
        if let Some(j) = self.spec.dense.iter().position(|n| n == name) {
            let col = b.ints("column", &[1], vec![j as i64]);
            return Ok(b.op("Gather", &[DENSE, &col], vec![Attr::Int("axis", 1)], name));
        }
        Err(ExportError::Core(mtrec_core::Error::Input(format!(
            "the model has no sparse or dense feature `{name}`"
        ))))
    }

    /// Sequence `name`: `[B, L, d]` embeddings and the `[B, L]` float mask
    /// (1 at the first `length` positions).
    pub fn sequence(&self, b: &mut Builder, w: &mut Weights, name: &str) -> Result<(String, String)> {
        let (i, q) = self
            .spec
            .sequences
            .iter()
            .enumerate()
            .find(|(_, q)| q.name == name)
            .ok_or_else(|| {
                ExportError::Core(mtrec_core::Error::Input(format!(
                    "the model has no sequence feature `{name}`"
                )))
            })?;
        let (table, offset) = &self.sequences[i];
        let table = w.use_weight(b, table)?;
        let ids = sequence_ids(&q.name);
        let rows = if *offset == 0 {
            ids
        } else {
            let off = b.ints("offset", &[], vec![*offset]);
            b.op("Add", &[&ids, &off], vec![], "table_rows")
        };
        let emb = b.gather_rows(&table, &rows);
        let positions = b.ints("positions", &[q.max_len], (0..q.max_len as i64).collect());
        let lengths = b.unsqueeze(&sequence_lengths(&q.name), 1);
        let real = b.op("Less", &[&positions, &lengths], vec![], "real");
        let mask = b.op("Cast", &[&real], vec![Attr::Int("to", DataType::FLOAT as i64)], "mask");
        Ok((emb, mask))
    }

    /// The model input `[B, width]`.
    pub fn input(&self, b: &mut Builder, w: &mut Weights) -> Result<String> {
        let mut parts = Vec::new();
        let mut by_dim: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, f) in self.spec.sparse.iter().enumerate() {
            if self.in_input(&f.name) {
                by_dim.entry(self.slots[i].dim).or_default().push(i);
            }
        }
        for fields in by_dim.values() {
            parts.push(self.embed_fields(b, w, fields)?);
        }
        let kept: Vec<i64> = (0..self.spec.dense.len())
            .filter(|&j| self.in_input(&self.spec.dense[j]))
            .map(|j| j as i64)
            .collect();
        if kept.len() == self.spec.dense.len() && !kept.is_empty() {
            parts.push(DENSE.to_string());
        } else if !kept.is_empty() {
            let cols = b.ints("columns", &[kept.len()], kept);
            parts.push(b.op("Gather", &[DENSE, &cols], vec![Attr::Int("axis", 1)], "dense_kept"));
        }
        for q in self.spec.sequences.clone() {
            if !self.in_input(&q.name) {
                continue;
            }
            let (emb, mask) = self.sequence(b, w, &q.name)?;
            let m = b.unsqueeze(&mask, 2);
            let masked = b.op("Mul", &[&emb, &m], vec![], "masked");
            let summed = b.reduce_sum(&masked, 1);
            parts.push(match q.pooling {
                Pooling::Sum => summed,
                Pooling::Mean => {
                    // `sum * (1 / max(len, 1))`, as the core pools.
                    let one = b.ints("one", &[], vec![1]);
                    let n = b.op("Max", &[&sequence_lengths(&q.name), &one], vec![], "count");
                    let n = b.op("Cast", &[&n], vec![Attr::Int("to", DataType::FLOAT as i64)], "count");
                    let inv = b.op("Reciprocal", &[&n], vec![], "inverse");
                    let inv = b.unsqueeze(&inv, 1);
                    b.op("Mul", &[&summed, &inv], vec![], "pooled")
                }
            });
        }
        if self.spec.domain.is_some() {
            let table = w.use_weight(b, "features.domain")?;
            parts.push(b.gather_rows(&table, DOMAIN));
        }
        Ok(match parts.len() {
            0 => {
                return Err(ExportError::Core(mtrec_core::Error::Input(
                    "the model has no input features".into(),
                )))
            }
            1 => parts.remove(0),
            _ => {
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                b.op("Concat", &refs, vec![Attr::Int("axis", 1)], "input")
            }
        })
    }
}
