//! ESMM's own tests: the CTCVR prediction is the product of the CTR and CVR
//! predictions (checked on the logits, with a relative tolerance, large
//! logits included), every weight receives a gradient, and it trains on a
//! small synthetic click/conversion data set.
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

/// `logit(sigmoid(a) sigmoid(b))` in f64, by another route than the crate's
/// `-logsumexp(-a, -b, -a-b)`: `ln p = ln sigmoid(a) + ln sigmoid(b)` and
/// `ln(1 - p) = ln(sigmoid(-a) + sigmoid(a) sigmoid(-b))` (`1 - p_a p_b =
/// (1 - p_a) + p_a (1 - p_b)`: a sum of positive terms, no cancellation, so
/// it stays exact where `1 - p` rounds to 0 or `p` underflows).
fn logit_of_product(a: f64, b: f64) -> f64 {
    let sig = |x: f64| {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            x.exp() / (1.0 + x.exp())
        }
    };
    let ln_sig = |x: f64| {
        if x >= 0.0 {
            -(-x).exp().ln_1p()
        } else {
            x - x.exp().ln_1p()
        }
    };
    ln_sig(a) + ln_sig(b) - (sig(-a) + sig(a) * sig(-b)).ln()
}

/// `got` within a relative 1e-5 of `want` (with a unit floor for logits
/// near 0).
fn assert_logit_close(got: f32, want: f64, what: &str) {
    assert!(got.is_finite(), "{what}: {got}");
    assert!(
        (f64::from(got) - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{what}: logit {got} vs {want} by hand"
    );
}

#[test]
fn product_logit_is_the_logit_of_the_product_even_for_large_logits() {
    // Pairs with the same product-probability near 1 (40, 40: 1 - p ~ 8e-18)
    // differ only in the logit: a probability-space check cannot see them.
    let pairs: [(f32, f32); 11] = [
        (-30.0, 5.0),
        (-3.0, 1.0),
        (0.0, 0.0),
        (2.5, -2.0),
        (40.0, 40.0),
        (80.0, -80.0),
        (100.0, 90.0),
        (90.0, 100.0),
        (-200.0, -150.0),
        (60.0, 3.0),
        (0.7, 250.0),
    ];
    let a = Tensor::new(pairs.map(|p| p.0).as_slice(), &Device::Cpu).unwrap();
    let b = Tensor::new(pairs.map(|p| p.1).as_slice(), &Device::Cpu).unwrap();
    let out = mtrec_esmm::product_logit(&a, &b).unwrap().to_vec1::<f32>().unwrap();
    for ((x, y), o) in pairs.iter().zip(&out) {
        assert_logit_close(
            *o,
            logit_of_product(f64::from(*x), f64::from(*y)),
            &format!("({x}, {y})"),
        );
    }
    // Two literal values: logit(1/4) = -ln 3; 40, 40: 40 - ln(2 + e^-40).
    assert!((out[2] + 3f32.ln()).abs() < 1e-6, "{}", out[2]);
    assert!((f64::from(out[4]) - (40.0 - 2f64.ln())).abs() < 1e-4, "{}", out[4]);
}

/// The model's CTCVR logit is the logit of pCTR x pCVR, checked on the
/// logits (relative 1e-5), with the initial weights and with every dense
/// weight scaled up so that the logits are large.
#[test]
fn ctcvr_prediction_is_ctr_times_cvr() {
    let data = click_conversion(64, 1);
    let model = esmm(&data, true, 7);
    let batch = data.batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    for scale in [1.0, 12.0] {
        for (_, v) in model.params().vars() {
            v.set(&(v.as_tensor() * scale).unwrap()).unwrap();
        }
        let out = model.forward(&batch.inputs, false).unwrap();
        let logits = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        let (ctr, ctcvr, cvr) = (
            logits(&out.outputs[0]),
            logits(&out.outputs[1]),
            logits(&out.outputs[2]),
        );
        for r in 0..64 {
            let want = logit_of_product(f64::from(ctr[r]), f64::from(cvr[r]));
            assert_logit_close(
                ctcvr[r],
                want,
                &format!("scale {scale}, row {r}: pCTR logit {}, pCVR logit {}", ctr[r], cvr[r]),
            );
        }
        let largest = ctr.iter().chain(&cvr).fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("scale {scale}: largest |logit| {largest}");
        if scale > 1.0 {
            assert!(largest > 20.0, "the scaled weights give small logits: {largest}");
        }
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
