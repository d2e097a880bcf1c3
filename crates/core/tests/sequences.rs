//! Sequence features in the input layer: masked mean and sum pooling against
//! hand-computed values, an empty sequence pooling to zeros, shared tables,
//! side features left out of the input, the domain embedding, and the views.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::features::FeatureInput;
use mtrec_core::{
    DomainEmbedding, Domains, FeatureSpec, Inputs, ParamBuilder, ParamStore, Pooling, SequenceFeature, SequenceInput,
    SparseFeature,
};

fn set(store: &ParamStore, name: &str, values: &[f32]) {
    let (_, v) = store.all().into_iter().find(|(n, _)| n == name).unwrap();
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

fn seq(name: &str, pooling: Pooling, share_with: Option<&str>) -> SequenceFeature {
    SequenceFeature {
        name: name.into(),
        max_len: 3,
        vocab: 4,
        dim: 2,
        pooling,
        share_with: share_with.map(str::to_string),
    }
}

/// Field `item` (vocab 4, dim 2) and dense `d`; sequences as given.
fn spec(sequences: Vec<SequenceFeature>) -> FeatureSpec {
    FeatureSpec {
        sparse: vec![SparseFeature {
            name: "item".into(),
            vocab: 4,
            dim: 2,
        }],
        dense: vec!["d".into()],
        sequences,
        ..FeatureSpec::default()
    }
}

/// Three rows: lengths 2, 0 (empty) and 3; padding 0.
fn inputs(n_seqs: usize) -> Inputs {
    let ids = Tensor::new(&[[1u32], [2], [3]], &Device::Cpu).unwrap();
    let dense = Tensor::new(&[[10f32], [20.0], [30.0]], &Device::Cpu).unwrap();
    let seqs = (0..n_seqs)
        .map(|_| {
            let s = Tensor::new(&[[1u32, 3, 0], [0, 0, 0], [2, 2, 1]], &Device::Cpu).unwrap();
            SequenceInput::new(s, vec![2, 0, 3]).unwrap()
        })
        .collect();
    Inputs::new(Some(ids), Some(dense), None)
        .unwrap()
        .with_sequences(seqs)
        .unwrap()
}

/// Table rows: id k -> [k, -k] (and id 0 -> [100, 100], which masking must hide).
const TABLE: [f32; 8] = [100.0, 100.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0];

#[test]
fn mean_and_sum_pooling_by_hand_and_empty_is_zero() {
    let sp = spec(vec![seq("m", Pooling::Mean, None), seq("s", Pooling::Sum, None)]);
    assert_eq!(sp.width(), 2 + 1 + 2 + 2);
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu).pp("features")).unwrap();
    set(&store, "features.embedding.dim2", &TABLE);
    set(&store, "features.sequence.m", &TABLE);
    set(&store, "features.sequence.s", &TABLE);
    let x = input.forward(&inputs(2)).unwrap().to_vec2::<f32>().unwrap();
    // [item emb (2), dense, mean (2), sum (2)]
    assert_eq!(x[0], [1.0, -1.0, 10.0, 2.0, -2.0, 4.0, -4.0]); // ids 1, 3
    assert_eq!(x[1], [2.0, -2.0, 20.0, 0.0, 0.0, 0.0, 0.0]); // empty: zeros, not NaN
    let want = [3.0, -3.0, 30.0, 5.0 / 3.0, -5.0 / 3.0, 5.0, -5.0]; // ids 2, 2, 1
    for (got, want) in x[2].iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{:?}", x[2]);
    }
}

#[test]
fn shared_table_side_features_and_views() {
    let mut sp = spec(vec![seq("hist", Pooling::Sum, Some("item"))]);
    sp.side = vec!["d".into()];
    assert_eq!(sp.width(), 2 + 2);
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu).pp("features")).unwrap();
    // One table: the sequence has no table of its own.
    assert_eq!(store.tables().len(), 1);
    assert!(store.vars().is_empty(), "tables are not dense variables");
    set(&store, "features.embedding.dim2", &TABLE);
    let inp = inputs(1);
    let (x, views) = input.forward_with_views(&inp, false).unwrap();
    let x = x.to_vec2::<f32>().unwrap();
    assert_eq!(x[0], [1.0, -1.0, 4.0, -4.0]);
    assert_eq!(x[1], [2.0, -2.0, 0.0, 0.0]);
    // The side feature is still readable, the sequence position by position.
    assert_eq!(
        views.feature("d").unwrap().to_vec2::<f32>().unwrap(),
        [[10.0], [20.0], [30.0]]
    );
    assert_eq!(
        views.feature("item").unwrap().to_vec2::<f32>().unwrap(),
        [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]
    );
    let v = views.sequence("hist").unwrap();
    assert_eq!(v.embeddings.dims(), &[3, 3, 2]);
    assert_eq!(
        v.mask.to_vec2::<f32>().unwrap(),
        [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    );
    assert!(views.sequence("nope").is_err());
}

#[test]
fn domain_embedding_is_appended() {
    let mut sp = spec(Vec::new());
    sp.domain = Some(DomainEmbedding { count: 2, dim: 3 });
    assert_eq!(sp.width(), 2 + 1 + 3);
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu).pp("features")).unwrap();
    set(&store, "features.domain", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let domains = Domains::new(vec![1, 0, 1], 2, &Device::Cpu).unwrap();
    let base = inputs(0);
    let inp = Inputs::new(base.sparse.clone(), base.dense.clone(), Some(domains)).unwrap();
    let x = input.forward(&inp).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(&x[0][3..], &[4.0, 5.0, 6.0]);
    assert_eq!(&x[1][3..], &[1.0, 2.0, 3.0]);
    // Without domains in the batch: an error, not a panic.
    assert!(input.forward(&base).is_err());
}

#[test]
fn bad_specs_and_batches_are_errors() {
    let sp = spec(vec![seq("hist", Pooling::Mean, Some("nope"))]);
    let store = ParamStore::new();
    let e = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nope`"), "{e}");
    let sp = spec(vec![seq("hist", Pooling::Mean, None)]);
    let store = ParamStore::new();
    let input = FeatureInput::new(&sp, &ParamBuilder::new(&store, 1, &Device::Cpu)).unwrap();
    let e = input.forward(&inputs(0)).unwrap_err().to_string();
    assert!(e.contains("0 sequence columns") && e.contains("hist"), "{e}");
    let s = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
    assert!(SequenceInput::new(s, vec![3]).is_err());
}
