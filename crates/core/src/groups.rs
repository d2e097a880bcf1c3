//! Rows of a batch grouped by domain: split a `[B, d]` tensor into one block
//! of rows per domain present, run each block with its domain's parameters,
//! and put the results back in row order.
//!
//! This is how every per-domain component (STAR's, SAR-Net's) applies
//! per-domain parameters: one
//! `index_select` per domain present, one matmul per domain and layer, then one
//! concatenation and one `index_select` with the inverse permutation (both
//! differentiable). Never per-row `[B, in, out]` weight tensors (a known slow
//! pattern of public code).

use crate::error::{Error, Result};
use crate::inputs::{Domains, ForwardCtx};
use candle_core::Tensor;

/// The rows of one domain present in a batch.
#[derive(Clone, Debug)]
pub struct Group {
    /// The domain id.
    pub domain: usize,
    /// The batch rows of this domain, in increasing order.
    pub rows: Vec<u32>,
    index: Tensor,
}

/// A batch's rows grouped by domain (domains in increasing id order; absent
/// domains have no group).
#[derive(Clone, Debug)]
pub struct DomainGroups {
    pub groups: Vec<Group>,
    /// `inverse[r]` = position of row `r` in the concatenated groups; `None`
    /// when the concatenation already is in row order (e.g. one domain only).
    inverse: Option<Tensor>,
}

/// The batch's domain ids, or an error naming `what` needs them; also checks
/// that the batch declares the `expected` number of domains the component was
/// built for.
pub fn domains_of<'a>(ctx: &ForwardCtx<'a>, what: &str, expected: usize) -> Result<&'a Domains> {
    let d = ctx.domains.ok_or_else(|| {
        Error::Input(format!(
            "`{what}` needs the domain id of every row, but the batch has none (the data has no domain column)"
        ))
    })?;
    if d.count() != expected {
        return Err(Error::Input(format!(
            "`{what}` was built for {expected} domains, but the batch declares {}",
            d.count()
        )));
    }
    Ok(d)
}

impl DomainGroups {
    pub fn new(domains: &Domains) -> Result<Self> {
        let device = domains.tensor().device();
        let per = domains.rows_by_domain();
        let order: Vec<u32> = per.iter().flatten().copied().collect();
        let inverse = if order.iter().enumerate().all(|(i, &r)| i as u32 == r) {
            None
        } else {
            let mut inv = vec![0u32; order.len()];
            for (j, &r) in order.iter().enumerate() {
                inv[r as usize] = j as u32;
            }
            Some(Tensor::new(inv.as_slice(), device)?)
        };
        let groups = per
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(domain, rows)| {
                let index = Tensor::new(rows.as_slice(), device)?;
                Ok(Group { domain, rows, index })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { groups, inverse })
    }

    /// The rows of `x` (`[B, ...]`) of each group, in group order.
    pub fn split(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        if self.groups.len() == 1 {
            return Ok(vec![x.clone()]);
        }
        self.groups
            .iter()
            .map(|g| {
                // `Model::forward` sorts rows by domain: a group is then one
                // contiguous block, taken as a view.
                let (first, n) = (g.rows[0] as usize, g.rows.len());
                if g.rows[n - 1] as usize == first + n - 1 {
                    Ok(x.narrow(0, first, n)?)
                } else {
                    Ok(x.index_select(&g.index, 0)?)
                }
            })
            .collect()
    }

    /// The inverse of [`DomainGroups::split`]: one block per group, in group
    /// order, back into a `[B, ...]` tensor in row order.
    pub fn merge(&self, parts: &[Tensor]) -> Result<Tensor> {
        if parts.len() != self.groups.len() {
            return Err(Error::GraphWide(format!(
                "internal: {} blocks for {} domain groups",
                parts.len(),
                self.groups.len()
            )));
        }
        let cat = match parts {
            [one] => one.clone(),
            _ => Tensor::cat(parts, 0)?,
        };
        Ok(match &self.inverse {
            None => cat,
            Some(inv) => cat.index_select(inv, 0)?,
        })
    }

    /// Applies `f(domain, rows)` to each group's rows of `x` and merges the results.
    pub fn map(&self, x: &Tensor, mut f: impl FnMut(usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let parts = self.split(x)?;
        let outs = self
            .groups
            .iter()
            .zip(&parts)
            .map(|(g, xp)| f(g.domain, xp))
            .collect::<Result<Vec<_>>>()?;
        self.merge(&outs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn split_and_merge_restore_row_order() {
        let doms = Domains::new(vec![2, 0, 2, 1, 0], 4, &Device::Cpu).unwrap();
        let g = DomainGroups::new(&doms).unwrap();
        let present: Vec<usize> = g.groups.iter().map(|g| g.domain).collect();
        assert_eq!(present, [0, 1, 2]);
        assert_eq!(g.groups[0].rows, [1, 4]);
        assert_eq!(g.groups[2].rows, [0, 2]);
        let x = Tensor::new(&[[0f32, 0.5], [1., 1.5], [2., 2.5], [3., 3.5], [4., 4.5]], &Device::Cpu).unwrap();
        let parts = g.split(&x).unwrap();
        assert_eq!(parts[0].to_vec2::<f32>().unwrap(), [[1., 1.5], [4., 4.5]]);
        let back = g.merge(&parts).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), x.to_vec2::<f32>().unwrap());
        // Each group's rows seen with their domain.
        let tagged = g
            .map(&x, |p, xp| Ok(xp.affine(0.0, p as f64)?))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(tagged.iter().map(|r| r[0]).collect::<Vec<_>>(), [2., 0., 2., 1., 0.]);
    }

    #[test]
    fn one_domain_needs_no_permutation() {
        let doms = Domains::new(vec![1, 1, 1], 3, &Device::Cpu).unwrap();
        let g = DomainGroups::new(&doms).unwrap();
        assert_eq!(g.groups.len(), 1);
        assert!(g.inverse.is_none());
        let doms = Domains::new(vec![0, 0, 1, 2], 3, &Device::Cpu).unwrap();
        assert!(DomainGroups::new(&doms).unwrap().inverse.is_none());
    }
}
