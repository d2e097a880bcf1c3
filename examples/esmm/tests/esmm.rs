//! ESMM's own tests: the CTCVR prediction is the product of the CTR and CVR
//! predictions, every weight receives a gradient, and it trains on a small
//! synthetic click/conversion data set.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::registry::architecture;
use mtrec_core::{GraphEnv, Model, NodeSpec, TaskInfo, TaskKind};
use mtrec_data::{split, Dataset, SparseColumns};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn binary(name: &str) -> TaskInfo {
    TaskInfo {
        name: name.into(),
        kind: TaskKind::Binary,
    }
}

/// Impressions with 3 sparse fields; click ~ sigmoid(u_f0 + v_f1), conversion
/// after a click ~ sigmoid(w_f2 - 1). Tasks `ctr` (click) and `ctcvr` (click
/// and conversion), both on every row (the entire space).
fn click_conversion(rows: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = [20usize, 20, 20];
    let effect: Vec<Vec<f32>> = vocab
        .iter()
        .map(|&v| (0..v).map(|_| rng.random_range(-2.0..2.0)).collect())
        .collect();
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let mut ids = Vec::with_capacity(rows * 3);
    let mut labels = Vec::with_capacity(rows * 2);
    for _ in 0..rows {
        let f: Vec<usize> = vocab.iter().map(|&v| rng.random_range(0..v)).collect();
        ids.extend(f.iter().map(|&i| i as u32));
        let click = rng.random::<f32>() < sig(effect[0][f[0]] + effect[1][f[1]]);
        let convert = click && rng.random::<f32>() < sig(effect[2][f[2]] - 1.0);
        labels.push(if click { 1.0 } else { 0.0 });
        labels.push(if convert { 1.0 } else { 0.0 });
    }
    let sparse = SparseColumns {
        fields: vec!["user".into(), "item".into(), "shop".into()],
        vocab: vocab.to_vec(),
        ids,
    };
    let masks = vec![1.0; labels.len()];
    Dataset::new(
        vec![binary("ctr"), binary("ctcvr")],
        Some(sparse),
        None,
        labels,
        masks,
        None,
    )
    .unwrap()
}

fn esmm(data: &Dataset, extra_cvr_task: bool, seed: u64) -> Model {
    mtrec_esmm::link();
    let features = data.features(4);
    let mut tasks = data.tasks.clone();
    if extra_cvr_task {
        tasks.push(binary("cvr"));
    }
    let env = GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: 0,
        features: Default::default(),
    };
    let mut graph = architecture("esmm").unwrap().expand(&toml::Table::new(), &env).unwrap();
    if extra_cvr_task {
        // Report pCVR as a third output, read straight from the CVR logit.
        graph
            .nodes
            .push(NodeSpec::new("tower-cvr", "logit").input("cvr").task("cvr"));
    }
    Model::build(&graph, &features, &tasks, 0, seed, &Device::Cpu).unwrap()
}

#[test]
fn product_logit_is_the_logit_of_the_product_even_for_large_logits() {
    let a = Tensor::new(&[-30.0f32, -3.0, 0.0, 2.5, 40.0, 80.0], &Device::Cpu).unwrap();
    let b = Tensor::new(&[5.0f32, 1.0, 0.0, -2.0, 40.0, -80.0], &Device::Cpu).unwrap();
    let out = mtrec_esmm::product_logit(&a, &b).unwrap().to_vec1::<f32>().unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for ((x, y), o) in a
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .zip(b.to_vec1::<f32>().unwrap())
        .zip(&out)
    {
        assert!(o.is_finite(), "{x} {y} -> {o}");
        let want = sig(*x as f64) * sig(y as f64);
        assert!(
            (sig(*o as f64) - want).abs() < 1e-6,
            "{x} {y}: {} vs {want}",
            sig(*o as f64)
        );
    }
}

#[test]
fn ctcvr_prediction_is_ctr_times_cvr() {
    let data = click_conversion(64, 1);
    let model = esmm(&data, true, 7);
    let batch = data.batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let out = model.forward(&batch.inputs, false).unwrap();
    let p = |t: &Tensor| -> Vec<f64> {
        t.to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| 1.0 / (1.0 + (-(x as f64)).exp()))
            .collect()
    };
    let (ctr, ctcvr, cvr) = (p(&out.outputs[0]), p(&out.outputs[1]), p(&out.outputs[2]));
    for r in 0..64 {
        assert!(
            (ctcvr[r] - ctr[r] * cvr[r]).abs() < 1e-6,
            "row {r}: pCTCVR {} vs pCTR {} x pCVR {}",
            ctcvr[r],
            ctr[r],
            cvr[r]
        );
    }
}

#[test]
fn gradients_reach_every_weight_including_the_cvr_network() {
    let data = click_conversion(256, 2);
    let model = esmm(&data, false, 3);
    let names: Vec<String> = model.params().vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.starts_with("cvr-hidden.")), "{names:?}");
    let batch = data.batch(&(0..256).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let unchanged = mtrec_train::check::unchanged_after_one_step(&model, &batch).unwrap();
    assert!(unchanged.is_empty(), "no gradient reached: {unchanged:?}");
}

#[test]
fn trains_over_the_entire_space() {
    let data = click_conversion(4000, 5);
    let model = esmm(&data, false, 1);
    let s = split(data.rows(), [0.8, 0.1, 0.1], 1).unwrap();
    let cfg = mtrec_train::TrainConfig {
        epochs: 8,
        batch_size: 128,
        lr: 0.01,
        ..mtrec_train::TrainConfig::default()
    };
    mtrec_train::train(&model, &data, &s, &cfg, |_| {}).unwrap();
    let ev = mtrec_train::evaluate(&model, &data, &s.test, 1024).unwrap();
    for t in &ev.tasks {
        let auc = t.metrics.auc.unwrap();
        assert!(auc > 0.65, "{}: test AUC {auc}", t.task);
    }
}

#[test]
fn missing_tasks_are_named() {
    mtrec_esmm::link();
    let env = GraphEnv {
        input_width: 8,
        tasks: vec![binary("click"), binary("buy")],
        domains: 0,
        features: Default::default(),
    };
    let err = architecture("esmm")
        .unwrap()
        .expand(&toml::Table::new(), &env)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("needs a task `ctr`") && err.contains("click, buy"),
        "{err}"
    );
}
