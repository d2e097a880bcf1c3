//! Warm start: a trained model's weights copied into a model whose
//! vocabularies grew, field by field.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use mtrec_core::components::tower::{MlpTowerKind, MlpTowerParams};
use mtrec_core::warm::copy_trained;
use mtrec_core::{FeatureSpec, GraphSpec, Model, NodeSpec, SparseFeature, TaskInfo, TaskKind, INPUT};

fn model(vocab_a: usize, vocab_b: usize, units: usize, seed: u64) -> Model {
    let field = |name: &str, vocab| SparseFeature {
        name: name.into(),
        vocab,
        dim: 4,
    };
    let features = FeatureSpec {
        sparse: vec![field("a", vocab_a), field("b", vocab_b)],
        dense: vec!["x".into()],
        ..FeatureSpec::default()
    };
    let tower = MlpTowerParams {
        units: vec![units],
        ..MlpTowerParams::default()
    };
    let graph = GraphSpec {
        nodes: vec![NodeSpec::of("tower-y", &MlpTowerKind, &tower).input(INPUT).task("y")],
    };
    let tasks = [TaskInfo {
        name: "y".into(),
        kind: TaskKind::Binary,
    }];
    Model::build(&graph, &features, &tasks, 0, seed, &Device::Cpu).unwrap()
}

fn rows(m: &Model, table: &str) -> Vec<Vec<f32>> {
    let t = m.params().tables().into_iter().find(|(n, _)| n == table).unwrap().1;
    t.as_tensor().to_vec2().unwrap()
}

/// Field `a` grows from 5 to 7 ids: its old rows are copied, its new rows
/// keep the new model's initial values, and field `b`, whose rows moved
/// from offset 5 to 7 in the shared table, keeps its trained rows.
#[test]
fn grown_vocabularies_keep_old_rows_at_their_new_offsets() {
    let old = model(5, 3, 8, 1);
    let new = model(7, 3, 8, 2);
    let fresh = rows(&new, "features.embedding.dim4");
    let done = copy_trained(&old, &new).unwrap();
    assert_eq!(done.grown, vec![("a".to_string(), 5, 7)]);
    let table = "features.embedding.dim4";
    let (o, n) = (rows(&old, table), rows(&new, table));
    assert_eq!(n.len(), 10);
    assert_eq!(n[..5], o[..5], "a's trained ids");
    assert_eq!(n[5..7], fresh[5..7], "a's new ids keep their initial values");
    assert_ne!(n[5..7], o[5..7]);
    assert_eq!(n[7..10], o[5..8], "b's trained ids at b's new offset");
    for (name, v) in new.params().vars() {
        let w = old.params().vars().into_iter().find(|(m, _)| *m == name).unwrap().1;
        assert_eq!(
            v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn another_architecture_or_a_shrunk_vocabulary_is_refused() {
    let old = model(5, 3, 8, 1);
    let e = copy_trained(&old, &model(5, 3, 16, 1)).unwrap_err().to_string();
    assert!(e.contains("tower-y") && e.contains("[model] sizes"), "{e}");
    let e = copy_trained(&old, &model(4, 3, 8, 1)).unwrap_err().to_string();
    assert!(
        e.contains("feature `a` has 4 ids") && e.contains("trained model's 5"),
        "{e}"
    );
}
