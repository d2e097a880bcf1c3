//! The input layer's gather: embedding rows of one table for every (row,
//! field), side by side, followed by the dense features, as one op:
//! `out[b] = [table[ids[b, 0]], ..., table[ids[b, F-1]], dense[b]]`.
//!
//! Backward: the table's gradient is built once by adding each output slice
//! into its row (candle's `index_select` + `cat` would zero-fill a table-sized
//! buffer inside `index_add`, copy the slices out of the concatenation's
//! gradient first, and add into another zeroed buffer).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::kernels::{add_row, for_row_chunks};
use super::{cpu_slice, op_error, storage_slice};

const OP: &str = "embedding gather";

/// `ids`: row-major `[B, F]` table rows (field offsets already added).
#[derive(Clone, Debug)]
pub(crate) struct EmbedConcat {
    pub ids: Arc<Vec<u32>>,
    pub fields: usize,
}

impl EmbedConcat {
    fn rows(&self) -> usize {
        self.ids.len().checked_div(self.fields).unwrap_or(0)
    }

    fn forward(
        &self,
        table: &[f32],
        tl: &Layout,
        dense: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (vocab, dim) = tl.shape().dims2()?;
        let b = self.rows();
        let n = match dense {
            Some((_, l)) => {
                let (db, n) = l.shape().dims2()?;
                if db != b {
                    return Err(op_error(OP, format!("{db} dense rows for {b} id rows")));
                }
                n
            }
            None => 0,
        };
        if let Some(bad) = self.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(op_error(OP, format!("row {bad} is out of the table's {vocab} rows")));
        }
        let width = self.fields * dim + n;
        let mut out = vec![0.0f32; b * width];
        let ids = &self.ids;
        let fields = self.fields;
        for_row_chunks(&mut out, width, |first, chunk| {
            for (j, row) in chunk.chunks_exact_mut(width).enumerate() {
                let r = first + j;
                let (emb, rest) = row.split_at_mut(fields * dim);
                for (f, slot) in emb.chunks_exact_mut(dim).enumerate() {
                    let id = ids[r * fields + f] as usize;
                    slot.copy_from_slice(&table[id * dim..(id + 1) * dim]);
                }
                if let Some((d, _)) = dense {
                    rest.copy_from_slice(&d[r * n..(r + 1) * n]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, width))))
    }

    fn backward(
        &self,
        table: &Tensor,
        dense: Option<&Tensor>,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (gg, gl) = grad.storage_and_layout();
        let g = storage_slice(OP, &gg, gl)?;
        let (vocab, dim) = table.dims2()?;
        let b = self.rows();
        let n = dense.map_or(Ok(0), |d| d.dims2().map(|(_, n)| n))?;
        let width = self.fields * dim + n;
        if g.len() != b * width {
            return Err(op_error(OP, "output gradient does not fit the output"));
        }
        let dtable = if table.track_op() {
            let mut dt = vec![0.0f32; vocab * dim];
            for (r, row) in g.chunks_exact(width).enumerate() {
                for (f, slot) in row[..self.fields * dim].chunks_exact(dim).enumerate() {
                    let id = self.ids[r * self.fields + f] as usize;
                    add_row(&mut dt[id * dim..(id + 1) * dim], slot);
                }
            }
            Some(Tensor::from_vec(dt, (vocab, dim), table.device())?)
        } else {
            None
        };
        let ddense = match dense {
            Some(d) if d.track_op() && n > 0 => {
                let mut dd = Vec::with_capacity(b * n);
                for row in g.chunks_exact(width) {
                    dd.extend_from_slice(&row[self.fields * dim..]);
                }
                Some(Tensor::from_vec(dd, (b, n), d.device())?)
            }
            _ => None,
        };
        Ok((dtable, ddense))
    }
}

impl CustomOp1 for EmbedConcat {
    fn name(&self) -> &'static str {
        "mtrec-embedding-gather"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(cpu_slice(OP, s, l)?, l, None)
    }
    fn bwd(&self, table: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.backward(table, None, grad)?.0)
    }
}

impl CustomOp2 for EmbedConcat {
    fn name(&self) -> &'static str {
        "mtrec-embedding-gather-dense"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(cpu_slice(OP, s1, l1)?, l1, Some((cpu_slice(OP, s2, l2)?, l2)))
    }
    fn bwd(
        &self,
        table: &Tensor,
        dense: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward(table, Some(dense), grad)
    }
}
