//! Evaluation split over the ranks of a distributed run: batch i of an
//! evaluation goes to rank `i % ranks`, and at the end every rank receives
//! every rank's kept scores, labels, domain and group ids and sample
//! weights (weighted metrics) and puts them back in batch order,
//! so that the metrics are computed over all rows exactly as one process
//! would (exact AUC over all ranks' rows, not an average of the ranks' AUCs;
//! logloss and MSE summed in the same order).

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::evaluate::GateUtilisation;

/// What one rank's evaluator kept: per task the labelled rows' outputs,
/// labels and domain ids, in the order of its batches, and its gate sums.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EvalPart {
    /// Per evaluated batch: its index in the evaluation and its labelled
    /// rows per task.
    pub segments: Vec<(u32, Vec<u32>)>,
    pub outputs: Vec<Vec<f32>>,
    pub labels: Vec<Vec<f32>>,
    pub domains: Vec<Vec<u32>>,
    /// Per task the labelled rows' group ids (empty without a group column).
    pub groups: Vec<Vec<u64>>,
    /// Per task the labelled rows' sample weights (empty unless the
    /// metrics are weighted).
    pub weights: Vec<Vec<f32>>,
    /// Gate weight sums (not yet divided by the rows).
    pub utilisation: Vec<GateUtilisation>,
    pub per_domain: Vec<(Vec<GateUtilisation>, usize)>,
    pub rows: usize,
}

/// The small part of a message, as JSON; the arrays follow as raw bytes.
#[derive(Serialize, Deserialize)]
struct Header {
    segments: Vec<(u32, Vec<u32>)>,
    utilisation: Vec<GateUtilisation>,
    per_domain: Vec<(Vec<GateUtilisation>, usize)>,
    rows: usize,
    /// Per task: outputs (= labels), domain ids, group ids and weights.
    lengths: Vec<(usize, usize, usize, usize)>,
}

fn bad(rank: usize, what: &str) -> TrainError {
    TrainError::Distributed(format!("rank {rank} sent a malformed evaluation message ({what})"))
}

impl EvalPart {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            segments: self.segments.clone(),
            utilisation: self.utilisation.clone(),
            per_domain: self.per_domain.clone(),
            rows: self.rows,
            lengths: self
                .outputs
                .iter()
                .zip(&self.domains)
                .zip(&self.groups)
                .zip(&self.weights)
                .map(|(((o, d), g), w)| (o.len(), d.len(), g.len(), w.len()))
                .collect(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        for ((((o, l), d), g), w) in self
            .outputs
            .iter()
            .zip(&self.labels)
            .zip(&self.domains)
            .zip(&self.groups)
            .zip(&self.weights)
        {
            out.extend(o.iter().flat_map(|x| x.to_le_bytes()));
            out.extend(l.iter().flat_map(|x| x.to_le_bytes()));
            out.extend(d.iter().flat_map(|x| x.to_le_bytes()));
            out.extend(g.iter().flat_map(|x| x.to_le_bytes()));
            out.extend(w.iter().flat_map(|x| x.to_le_bytes()));
        }
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8], rank: usize) -> Result<Self> {
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad(rank, "length"))?;
        let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad(rank, "length"))?;
        let json = bytes.get(8..8 + n).ok_or_else(|| bad(rank, "header"))?;
        let h: Header = serde_json::from_slice(json).map_err(|_| bad(rank, "header"))?;
        let mut at = 8 + n;
        let mut take = |count: usize, width: usize| -> Result<&[u8]> {
            let b = bytes.get(at..at + width * count).ok_or_else(|| bad(rank, "arrays"))?;
            at += width * count;
            Ok(b)
        };
        fn words<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
            b.chunks_exact(N).map(|c| {
                let mut w = [0u8; N];
                w.copy_from_slice(c);
                w
            })
        }
        let mut part = EvalPart {
            segments: h.segments,
            utilisation: h.utilisation,
            per_domain: h.per_domain,
            rows: h.rows,
            ..EvalPart::default()
        };
        for (o, d, g, w) in h.lengths {
            part.outputs.push(words(take(o, 4)?).map(f32::from_le_bytes).collect());
            part.labels.push(words(take(o, 4)?).map(f32::from_le_bytes).collect());
            part.domains.push(words(take(d, 4)?).map(u32::from_le_bytes).collect());
            part.groups.push(words(take(g, 8)?).map(u64::from_le_bytes).collect());
            part.weights.push(words(take(w, 4)?).map(f32::from_le_bytes).collect());
        }
        Ok(part)
    }
}

/// Adds `from`'s gate sums into `into` (an empty `into` takes `from`'s).
fn add_sums(into: &mut Vec<GateUtilisation>, from: &[GateUtilisation]) {
    if into.is_empty() {
        *into = from.to_vec();
        return;
    }
    for (a, b) in into.iter_mut().zip(from) {
        for (x, y) in a.mean_weight.iter_mut().zip(&b.mean_weight) {
            *x += y;
        }
    }
}

/// The ranks' parts as one part in batch order: what one process that
/// evaluated every batch would hold.
pub(crate) fn merge(parts: &[EvalPart], tasks: usize) -> Result<EvalPart> {
    let mut order: Vec<(u32, usize, usize)> = Vec::new();
    for (r, p) in parts.iter().enumerate() {
        if [
            p.outputs.len(),
            p.labels.len(),
            p.domains.len(),
            p.groups.len(),
            p.weights.len(),
        ]
        .iter()
        .any(|&n| n != tasks)
        {
            return Err(bad(r, "task count"));
        }
        order.extend((0..p.segments.len()).map(|s| (p.segments[s].0, r, s)));
    }
    order.sort_unstable();
    let mut out = EvalPart {
        outputs: vec![Vec::new(); tasks],
        labels: vec![Vec::new(); tasks],
        domains: vec![Vec::new(); tasks],
        groups: vec![Vec::new(); tasks],
        weights: vec![Vec::new(); tasks],
        ..EvalPart::default()
    };
    let mut cursor = vec![vec![0usize; tasks]; parts.len()];
    for (batch, r, s) in order {
        let p = &parts[r];
        let counts = &p.segments[s].1;
        if counts.len() != tasks {
            return Err(bad(r, "segment"));
        }
        for t in 0..tasks {
            let (a, b) = (cursor[r][t], cursor[r][t] + counts[t] as usize);
            out.outputs[t].extend(p.outputs[t].get(a..b).ok_or_else(|| bad(r, "outputs"))?);
            out.labels[t].extend(p.labels[t].get(a..b).ok_or_else(|| bad(r, "labels"))?);
            if !p.domains[t].is_empty() {
                out.domains[t].extend(p.domains[t].get(a..b).ok_or_else(|| bad(r, "domains"))?);
            }
            if !p.groups[t].is_empty() {
                out.groups[t].extend(p.groups[t].get(a..b).ok_or_else(|| bad(r, "groups"))?);
            }
            if !p.weights[t].is_empty() {
                out.weights[t].extend(p.weights[t].get(a..b).ok_or_else(|| bad(r, "weights"))?);
            }
            cursor[r][t] = b;
        }
        out.segments.push((batch, counts.clone()));
    }
    for p in parts {
        add_sums(&mut out.utilisation, &p.utilisation);
        if out.per_domain.is_empty() {
            out.per_domain = p.per_domain.clone();
        } else if !p.per_domain.is_empty() {
            for ((u, n), (pu, pn)) in out.per_domain.iter_mut().zip(&p.per_domain) {
                add_sums(u, pu);
                *n += pn;
            }
        }
        out.rows += p.rows;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate(w: &[f64]) -> Vec<GateUtilisation> {
        vec![GateUtilisation {
            gate: "g".into(),
            experts: (0..w.len()).map(|i| format!("e#{i}")).collect(),
            mean_weight: w.to_vec(),
        }]
    }

    #[test]
    fn parts_merge_back_in_batch_order_and_survive_the_wire() {
        // One process: batches 0..4 with (task0, task1) labelled rows.
        // Rank 0 evaluated batches 0 and 2, rank 1 batches 1 and 3.
        let r0 = EvalPart {
            segments: vec![(0, vec![2, 1]), (2, vec![1, 0])],
            outputs: vec![vec![0.1, 0.2, 0.5], vec![1.0]],
            labels: vec![vec![1.0, 0.0, 1.0], vec![0.0]],
            domains: vec![vec![0, 1, 0], vec![1]],
            groups: vec![vec![u64::MAX, 5, 7], vec![1 << 40]],
            weights: vec![vec![0.5, 0.0, 3.25], vec![1e-3]],
            utilisation: gate(&[1.0, 2.0]),
            per_domain: vec![(gate(&[0.5, 1.0]), 2), (gate(&[0.5, 1.0]), 1)],
            rows: 3,
        };
        let r1 = EvalPart {
            segments: vec![(1, vec![1, 2]), (3, vec![0, 0])],
            outputs: vec![vec![0.3], vec![2.0, 3.0]],
            labels: vec![vec![0.0], vec![1.0, 1.0]],
            domains: vec![vec![1], vec![0, 1]],
            groups: vec![vec![9], vec![2, 3]],
            weights: vec![vec![7.0], vec![2.0, f32::MAX]],
            utilisation: gate(&[0.5, 0.5]),
            per_domain: vec![(gate(&[0.25, 0.25]), 1), (gate(&[0.25, 0.25]), 0)],
            rows: 1,
        };
        let wired: Vec<EvalPart> = [&r0, &r1]
            .iter()
            .enumerate()
            .map(|(r, p)| EvalPart::from_bytes(&p.to_bytes().unwrap(), r).unwrap())
            .collect();
        assert_eq!(wired, vec![r0.clone(), r1.clone()]);
        let m = merge(&wired, 2).unwrap();
        assert_eq!(m.outputs, vec![vec![0.1, 0.2, 0.3, 0.5], vec![1.0, 2.0, 3.0]]);
        assert_eq!(m.labels, vec![vec![1.0, 0.0, 0.0, 1.0], vec![0.0, 1.0, 1.0]]);
        assert_eq!(m.domains, vec![vec![0, 1, 1, 0], vec![1, 0, 1]]);
        assert_eq!(m.groups, vec![vec![u64::MAX, 5, 9, 7], vec![1 << 40, 2, 3]]);
        // Weights travel with their rows, bit for bit.
        assert_eq!(m.weights, vec![vec![0.5, 0.0, 7.0, 3.25], vec![1e-3, 2.0, f32::MAX]]);
        assert_eq!(m.utilisation[0].mean_weight, vec![1.5, 2.5]);
        assert_eq!(m.per_domain[0].1, 3);
        assert_eq!(m.per_domain[1].0[0].mean_weight, vec![0.75, 1.25]);
        assert_eq!(m.rows, 4);
        // A message cut inside its last array (the weights) is refused.
        let bytes = r1.to_bytes().unwrap();
        assert!(EvalPart::from_bytes(&bytes[..bytes.len() - 4], 1)
            .unwrap_err()
            .to_string()
            .contains("arrays"));
        // Unweighted parts (no weights kept) merge without weights.
        let plain = |p: &EvalPart| EvalPart {
            weights: vec![Vec::new(); 2],
            ..p.clone()
        };
        let m = merge(&[plain(&r0), plain(&r1)], 2).unwrap();
        assert_eq!(m.weights, vec![Vec::<f32>::new(); 2]);
        assert!(EvalPart::from_bytes(&r0.to_bytes().unwrap()[..20], 1)
            .unwrap_err()
            .to_string()
            .contains("rank 1"));
    }
}
