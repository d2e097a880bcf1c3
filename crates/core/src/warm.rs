//! Warm start: a trained model's weights copied into a model built for new
//! data (the daily retraining loop), where vocabularies may have grown.
//!
//! Every dense variable and buffer is copied by name and must have the same
//! shape: the architecture and its sizes are the trained model's. Embedding
//! tables are copied feature by feature ([`FieldRows`]): a grown vocabulary
//! keeps its old ids and appends new ones after them, so a feature's first
//! `old rows` rows are the trained ones and the rows after them keep the
//! new model's seeded initial values. Since fields of one width share a
//! table, a grown field moves the fields after it: rows are copied to their
//! new offsets, never by position in the table.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::features::FieldRows;
use crate::model::Model;

/// What [`copy_trained`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WarmStart {
    /// Variables, buffers and tables copied.
    pub copied: usize,
    /// Per feature whose vocabulary grew: (feature, old rows, new rows).
    pub grown: Vec<(String, usize, usize)>,
}

fn mismatch(message: String) -> Error {
    Error::Input(format!("warm start: {message}"))
}

/// Copies `from`'s weights into `into` (see the module docs). Fails, with
/// `into` possibly partly written, when a variable is missing or has
/// another shape, or a feature has fewer rows than before (a vocabulary
/// never shrinks when it grows).
pub fn copy_trained(from: &Model, into: &Model) -> Result<WarmStart> {
    let old: BTreeMap<String, Var> = from.params().all().into_iter().collect();
    let tables: BTreeMap<String, Var> = into.params().tables().into_iter().collect();
    let mut done = WarmStart::default();
    for (name, var) in into.params().all() {
        if tables.contains_key(&name) {
            continue;
        }
        let src = old.get(&name).ok_or_else(|| {
            mismatch(format!(
                "the trained model has no `{name}`: its [model] differs from this one"
            ))
        })?;
        if src.dims() != var.dims() {
            return Err(mismatch(format!(
                "`{name}` is {:?} in the trained model and {:?} here: the [model] sizes must be the trained ones",
                src.dims(),
                var.dims()
            )));
        }
        var.set(src.as_tensor())?;
        done.copied += 1;
    }
    let old_rows: BTreeMap<(String, String), FieldRows> = from
        .field_rows()
        .into_iter()
        .map(|f| ((f.table.clone(), f.feature.clone()), f))
        .collect();
    let new_rows = into.field_rows();
    for (table, var) in &tables {
        let src = old
            .get(table)
            .ok_or_else(|| mismatch(format!("the trained model has no embedding table `{table}`")))?;
        if src.dim(1)? != var.dim(1)? {
            return Err(mismatch(format!(
                "table `{table}` is {} wide in the trained model and {} here",
                src.dim(1)?,
                var.dim(1)?
            )));
        }
        let mut pieces: Vec<Tensor> = Vec::new();
        let mut at = 0usize;
        let mut fields: Vec<&FieldRows> = new_rows.iter().filter(|f| &f.table == table).collect();
        fields.sort_by_key(|f| f.offset);
        let fresh = var.as_tensor();
        for f in fields {
            let o = old_rows.get(&(table.clone(), f.feature.clone())).ok_or_else(|| {
                mismatch(format!(
                    "feature `{}` is not in the trained model's table `{table}`",
                    f.feature
                ))
            })?;
            if o.rows > f.rows {
                return Err(mismatch(format!(
                    "feature `{}` has {} ids, fewer than the trained model's {}: its vocabulary must be the trained one or grown from it",
                    f.feature, f.rows, o.rows
                )));
            }
            if f.offset > at {
                pieces.push(fresh.narrow(0, at, f.offset - at)?);
            }
            pieces.push(src.as_tensor().narrow(0, o.offset, o.rows)?);
            if f.rows > o.rows {
                pieces.push(fresh.narrow(0, f.offset + o.rows, f.rows - o.rows)?);
                done.grown.push((f.feature.clone(), o.rows, f.rows));
            }
            at = f.offset + f.rows;
        }
        if at < var.dim(0)? {
            pieces.push(fresh.narrow(0, at, var.dim(0)? - at)?);
        }
        var.set(&Tensor::cat(&pieces, 0)?)?;
        done.copied += 1;
    }
    Ok(done)
}
