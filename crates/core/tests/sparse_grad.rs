//! Row-sparse embedding gradients: a training pass reads only the rows its
//! batch touches, and the gradient of those rows' copy equals candle's dense
//! autograd gradient of the whole table (computed here independently, with
//! `index_select` on the tables themselves) at the touched rows, and zero
//! elsewhere. Every kind of lookup: fields of two widths (two tables), a
//! side field read through the views, a sequence sharing a field's table, a
//! sequence with its own table (mean pooled), and the domain embedding; ids
//! drawn at random with many duplicates.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use candle_core::{Device, Tensor, Var};
use mtrec_core::features::FeatureInput;
use mtrec_core::{
    DomainEmbedding, Domains, FeatureSpec, Inputs, ParamBuilder, ParamStore, Pooling, SequenceFeature, SequenceInput,
    SparseFeature,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const B: usize = 64;
const L: usize = 5;

fn field(name: &str, vocab: usize, dim: usize) -> SparseFeature {
    SparseFeature {
        name: name.into(),
        vocab,
        dim,
    }
}

fn spec() -> FeatureSpec {
    FeatureSpec {
        // Widths 4 and 3: two tables; `user` and `item` share the dim-4 table.
        sparse: vec![
            field("user", 50, 4),
            field("cat", 20, 3),
            field("item", 30, 4),
            field("pos", 15, 3),
        ],
        dense: vec!["d0".into(), "d1".into()],
        sequences: vec![
            SequenceFeature {
                name: "hist".into(),
                max_len: L,
                vocab: 30,
                dim: 4,
                pooling: Pooling::Sum,
                share_with: Some("item".into()),
            },
            SequenceFeature {
                name: "tags".into(),
                max_len: L,
                vocab: 9,
                dim: 2,
                pooling: Pooling::Mean,
                share_with: None,
            },
        ],
        // Read through the views only (as SAR-Net's debias features).
        side: vec!["pos".into()],
        domain: Some(DomainEmbedding { count: 5, dim: 2 }),
    }
}

struct Batch {
    inputs: Inputs,
    ids: Vec<Vec<u32>>,
    seqs: Vec<(Vec<u32>, Vec<u32>)>,
    domains: Vec<u32>,
}

fn batch(rng: &mut StdRng) -> Batch {
    let sp = spec();
    // Small id ranges: many duplicates within the batch.
    let ids: Vec<Vec<u32>> = (0..B)
        .map(|_| {
            sp.sparse
                .iter()
                .map(|f| rng.random_range(0..f.vocab.min(12)) as u32)
                .collect()
        })
        .collect();
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let sparse = Tensor::from_vec(flat, (B, sp.sparse.len()), &Device::Cpu).unwrap();
    let dense: Vec<f32> = (0..B * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dense = Tensor::from_vec(dense, (B, 2), &Device::Cpu).unwrap();
    let domains: Vec<u32> = (0..B).map(|_| rng.random_range(0..3)).collect();
    let mut seqs = Vec::new();
    let mut inputs_seqs = Vec::new();
    for q in &sp.sequences {
        let lengths: Vec<u32> = (0..B).map(|_| rng.random_range(0..=L as u32)).collect();
        let mut s = vec![0u32; B * L];
        for (r, &n) in lengths.iter().enumerate() {
            for p in 0..n as usize {
                s[r * L + p] = rng.random_range(1..q.vocab.min(8)) as u32;
            }
        }
        let t = Tensor::from_vec(s.clone(), (B, L), &Device::Cpu).unwrap();
        inputs_seqs.push(SequenceInput::new(t, lengths.clone()).unwrap());
        seqs.push((s, lengths));
    }
    let inputs = Inputs::new(
        Some(sparse),
        Some(dense),
        Some(Domains::new(domains.clone(), 5, &Device::Cpu).unwrap()),
    )
    .unwrap()
    .with_sequences(inputs_seqs)
    .unwrap();
    Batch {
        inputs,
        ids,
        seqs,
        domains,
    }
}

fn table(store: &ParamStore, name: &str) -> Var {
    store.tables().into_iter().find(|(n, _)| n == name).unwrap().1
}

fn index(rows: Vec<u32>) -> Tensor {
    let n = rows.len();
    Tensor::from_vec(rows, n, &Device::Cpu).unwrap()
}

/// The input layer written independently with candle's ops on the tables
/// (dense autograd reaches the whole tables): the model input and the side
/// field `pos`'s embedding.
fn reference(store: &ParamStore, b: &Batch) -> (Tensor, Tensor) {
    let t4 = table(store, "features.embedding.dim4");
    let t3 = table(store, "features.embedding.dim3");
    let tags = table(store, "features.sequence.tags");
    let dom = table(store, "features.domain");
    // Row offsets: in width 4 `user` (50 rows) then `item`; in width 3 `cat` (20) then `pos`.
    let col = |j: usize, off: u32| index(b.ids.iter().map(|r| r[j] + off).collect());
    let user = t4.as_tensor().index_select(&col(0, 0), 0).unwrap();
    let item = t4.as_tensor().index_select(&col(2, 50), 0).unwrap();
    let cat = t3.as_tensor().index_select(&col(1, 0), 0).unwrap();
    let pos = t3.as_tensor().index_select(&col(3, 20), 0).unwrap();
    let dense = b.inputs.dense.clone().unwrap();
    let pool = |t: &Tensor, s: &(Vec<u32>, Vec<u32>), offset: u32, dim: usize, mean: bool| {
        let rows = index(s.0.iter().map(|&i| i + offset).collect());
        let e = t.index_select(&rows, 0).unwrap().reshape((B, L, dim)).unwrap();
        let mut mask = vec![0f32; B * L];
        for (r, &n) in s.1.iter().enumerate() {
            mask[r * L..r * L + n as usize].fill(1.0);
        }
        let mask = Tensor::from_vec(mask, (B, L, 1), &Device::Cpu).unwrap();
        let sum = e.broadcast_mul(&mask).unwrap().sum(1).unwrap();
        if mean {
            let inv: Vec<f32> = s.1.iter().map(|&n| 1.0 / n.max(1) as f32).collect();
            sum.broadcast_mul(&Tensor::from_vec(inv, (B, 1), &Device::Cpu).unwrap())
                .unwrap()
        } else {
            sum
        }
    };
    let hist = pool(t4.as_tensor(), &b.seqs[0], 50, 4, false);
    let tg = pool(tags.as_tensor(), &b.seqs[1], 0, 2, true);
    let d = dom.as_tensor().index_select(&index(b.domains.clone()), 0).unwrap();
    // The input's order: sparse by width (3: cat; 4: user, item), dense,
    // pooled sequences, domain.
    let x = Tensor::cat(&[&cat, &user, &item, &dense, &hist, &tg, &d], 1).unwrap();
    (x, pos)
}

fn dense_of(values: &[f32], rows: &[u32], n: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * dim];
    for (i, &r) in rows.iter().enumerate() {
        out[r as usize * dim..(r as usize + 1) * dim].copy_from_slice(&values[i * dim..(i + 1) * dim]);
    }
    out
}

fn check(fused: bool) {
    mtrec_core::ops::with_fused(fused, || {
        let sp = spec();
        let store = ParamStore::new();
        let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 3, &Device::Cpu).pp("features")).unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let b = batch(&mut rng);
        let width = sp.width();
        let w: Vec<f32> = (0..B * width).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Tensor::from_vec(w, (B, width), &Device::Cpu).unwrap();
        let wp: Vec<f32> = (0..B * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wp = Tensor::from_vec(wp, (B, 3), &Device::Cpu).unwrap();

        let (x, views) = input.forward_with_views(&b.inputs, true).unwrap();
        let pos = views.feature("pos").unwrap();
        let loss = ((&x * &w).unwrap().sum_all().unwrap() + (&pos * &wp).unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let touched = views.into_touched();

        let (rx, rpos) = reference(&store, &b);
        assert_eq!(x.to_vec2::<f32>().unwrap(), rx.to_vec2::<f32>().unwrap(), "values");
        assert_eq!(pos.to_vec2::<f32>().unwrap(), rpos.to_vec2::<f32>().unwrap());
        let rloss = ((&rx * &w).unwrap().sum_all().unwrap() + (&rpos * &wp).unwrap().sum_all().unwrap()).unwrap();
        let rgrads = rloss.backward().unwrap();

        let names: BTreeSet<&str> = touched.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "features.domain",
                "features.embedding.dim3",
                "features.embedding.dim4",
                "features.sequence.tags"
            ])
        );
        for t in &touched {
            let var = table(&store, &t.table);
            let (n, dim) = var.dims2().unwrap();
            // Unique, increasing rows; the copy is [rows, dim], never the table.
            assert!(t.rows.windows(2).all(|p| p[0] < p[1]), "{}", t.table);
            assert_eq!(t.values.dims(), [t.rows.len(), dim]);
            assert!(
                t.rows.len() < n,
                "{}: the test's ids touch only part of the table",
                t.table
            );
            let sparse = grads.get(t.values.as_tensor()).unwrap();
            let sparse = dense_of(
                &sparse.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &t.rows,
                n,
                dim,
            );
            let want = rgrads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // Rows the reference gives a gradient are exactly the touched rows.
            let nonzero: BTreeSet<u32> = (0..n as u32)
                .filter(|&r| want[r as usize * dim..(r as usize + 1) * dim].iter().any(|g| *g != 0.0))
                .collect();
            assert!(nonzero.iter().all(|r| t.rows.contains(r)), "{}", t.table);
            for (i, (a, e)) in sparse.iter().zip(&want).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{} flat {i}: sparse {a} vs dense {e}",
                    t.table
                );
            }
        }
        // The tables themselves are not on the training graph.
        for (name, var) in store.tables() {
            assert!(grads.get(var.as_tensor()).is_none(), "{name}");
        }
    });
}

#[test]
fn sparse_gradient_equals_dense_autograd_fused_ops() {
    check(true);
}

#[test]
fn sparse_gradient_equals_dense_autograd_plain_ops() {
    check(false);
}

#[test]
fn an_id_past_its_vocabulary_is_an_error_naming_the_field() {
    let sp = FeatureSpec {
        sparse: vec![field("a", 4, 2), field("b", 3, 2)],
        ..FeatureSpec::default()
    };
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu)).unwrap();
    // Id 3 of `b` would read row 7 of the shared table: inside it, but `b`'s
    // vocabulary has 3 ids.
    let ids = Tensor::new(&[[1u32, 3]], &Device::Cpu).unwrap();
    let inputs = Inputs::new(Some(ids), None, None).unwrap();
    for train in [false, true] {
        let e = input.forward_with_views(&inputs, train).unwrap_err().to_string();
        assert!(e.contains("`b`") && e.contains("id 3"), "{e}");
    }
}

#[test]
fn evaluation_reads_the_tables_and_touches_nothing() {
    let sp = spec();
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 3, &Device::Cpu).pp("features")).unwrap();
    let b = batch(&mut StdRng::seed_from_u64(5));
    let (x_eval, views) = input.forward_with_views(&b.inputs, false).unwrap();
    assert!(views.into_touched().is_empty());
    let (x_train, _) = input.forward_with_views(&b.inputs, true).unwrap();
    assert_eq!(x_eval.to_vec2::<f32>().unwrap(), x_train.to_vec2::<f32>().unwrap());
}

/// One width, no side feature: the fused gather (`ops::embed_concat`) runs
/// on the touched rows' copy; its gradient against dense autograd.
#[test]
fn fused_gather_on_touched_rows_equals_dense_autograd() {
    let sp = FeatureSpec {
        sparse: vec![field("a", 40, 4), field("b", 9, 4), field("c", 25, 4)],
        dense: vec!["d".into()],
        ..FeatureSpec::default()
    };
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 2, &Device::Cpu)).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let ids: Vec<u32> = (0..B * 3).map(|_| rng.random_range(0..9)).collect();
    let sparse = Tensor::from_vec(ids.clone(), (B, 3), &Device::Cpu).unwrap();
    let dense = Tensor::from_vec((0..B).map(|i| i as f32).collect::<Vec<_>>(), (B, 1), &Device::Cpu).unwrap();
    let inputs = Inputs::new(Some(sparse), Some(dense.clone()), None).unwrap();
    let w = Tensor::from_vec(
        (0..B * 13).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(),
        (B, 13),
        &Device::Cpu,
    )
    .unwrap();
    let t = table(&store, "embedding.dim4");
    let offsets = [0u32, 40, 49];
    let rows: Vec<u32> = ids
        .chunks(3)
        .flat_map(|r| (0..3).map(move |j| r[j] + offsets[j]))
        .collect();
    let reference = t
        .as_tensor()
        .index_select(&index(rows), 0)
        .unwrap()
        .reshape((B, 12))
        .unwrap();
    let reference = Tensor::cat(&[&reference, &dense], 1).unwrap();
    let want = (&reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let want = want
        .get(t.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for fused in [true, false] {
        mtrec_core::ops::with_fused(fused, || {
            let (x, views) = input.forward_with_views(&inputs, true).unwrap();
            assert_eq!(x.to_vec2::<f32>().unwrap(), reference.to_vec2::<f32>().unwrap());
            let grads = (&x * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let touched = views.into_touched();
            assert_eq!(touched.len(), 1);
            let g = grads.get(touched[0].values.as_tensor()).unwrap();
            let got = dense_of(
                &g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &touched[0].rows,
                74,
                4,
            );
            for (a, e) in got.iter().zip(&want) {
                assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "fused {fused}: {a} vs {e}");
            }
        });
    }
}
