//! AITM: the funnel graph (node by node, validated, which nodes are shared),
//! parameter errors, the AIT module and the calibrator against hand-computed
//! values, the calibrator's share of the gradient (and its absence at
//! alpha = 0), gradients reaching every weight, and learning on funnel data
//! against the constant predictor, the untrained model and Shared-Bottom.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};
use mtrec_core::{
    registry, Component, ForwardCtx, Fusion, GraphEnv, GraphSpec, Model, NodeIo, NodeSpec, ParamBuilder, ParamStore,
    Penalties, Port, TaskInfo, TaskKind,
};
use mtrec_data::{split, Dataset, MultiDomainSynthetic};
use mtrec_train::balance::task_losses;
use mtrec_train::check::unchanged_after_one_step;
use mtrec_train::{evaluate, train, TrainConfig};

fn dev() -> Device {
    Device::Cpu
}

fn tasks(kinds: &[(&str, TaskKind)]) -> Vec<TaskInfo> {
    kinds
        .iter()
        .map(|(n, k)| TaskInfo {
            name: n.to_string(),
            kind: *k,
        })
        .collect()
}

fn funnel3() -> Vec<TaskInfo> {
    tasks(&[
        ("click", TaskKind::Binary),
        ("cart", TaskKind::Binary),
        ("buy", TaskKind::Binary),
    ])
}

fn expand(params: &str, tasks: &[TaskInfo]) -> mtrec_core::Result<GraphSpec> {
    mtrec_aitm::link();
    let env = GraphEnv {
        input_width: 6,
        tasks: tasks.to_vec(),
        domains: 0,
        features: Default::default(),
    };
    registry::architecture("aitm")?.expand(&toml::from_str(params).unwrap(), &env)
}

fn node<'a>(g: &'a GraphSpec, id: &str) -> &'a NodeSpec {
    g.nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node `{id}`"))
}

/// Funnel data in one domain: `tasks` steps, step t reached only after
/// step t - 1, every label over every row.
fn funnel_data(rows: usize, tasks: usize, seed: u64) -> Dataset {
    MultiDomainSynthetic {
        rows,
        domains: 1,
        domain_shares: vec![1.0],
        domain_shift: 0.0,
        tasks,
        task_correlation: 0.5,
        domain_feature: false,
        history: 0,
        funnel: true,
        seed,
        ..MultiDomainSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn build(arch: &str, params: &str, data: &Dataset, seed: u64) -> Model {
    mtrec_aitm::link();
    mtrec_shared_bottom::link();
    let features = data.features(4);
    let env = GraphEnv {
        input_width: features.width(),
        tasks: data.tasks.clone(),
        domains: 1,
        features: features.clone(),
    };
    let graph = registry::architecture(arch)
        .unwrap()
        .expand(&toml::from_str(params).unwrap(), &env)
        .unwrap();
    Model::build(&graph, &features, &data.tasks, 1, seed, &dev()).unwrap()
}

const SMALL: &str = "task_units = [16, 8]\ninfo_units = [8]";

#[test]
fn expands_to_the_funnel_graph_in_task_order() {
    let g = expand("", &funnel3()).unwrap();
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "q-click",
            "tower-click",
            "q-cart",
            "info-click",
            "ait-cart",
            "tower-cart",
            "q-buy",
            "info-cart",
            "ait-buy",
            "tower-buy",
            "calibrator"
        ]
    );
    // z_1 = q_1; p_(t-1) = g(z_(t-1)); z_t = AIT(p_(t-1), q_t); towers read z_t.
    assert_eq!(node(&g, "tower-click").inputs, ["q-click"]);
    assert_eq!(node(&g, "info-click").inputs, ["q-click"]);
    assert_eq!(node(&g, "ait-cart").inputs, ["info-click", "q-cart"]);
    assert_eq!(node(&g, "info-cart").inputs, ["ait-cart"]);
    assert_eq!(node(&g, "ait-buy").inputs, ["info-cart", "q-buy"]);
    assert_eq!(node(&g, "tower-buy").inputs, ["ait-buy"]);
    assert_eq!(node(&g, "tower-buy").task.as_deref(), Some("buy"));
    let cal = node(&g, "calibrator");
    assert_eq!(cal.kind, "funnel-calibrator");
    assert_eq!(cal.inputs, ["tower-click", "tower-cart", "tower-buy"]);
    assert_eq!(cal.params["alpha"].as_float(), Some(0.6));
    // The paper's widths: q of [128, 64, 32], info of [32], linear heads.
    assert_eq!(node(&g, "q-buy").params["units"].as_array().unwrap().len(), 3);

    let env = GraphEnv {
        input_width: 6,
        tasks: funnel3(),
        domains: 0,
        features: Default::default(),
    };
    let checked = mtrec_core::graph::validate(&g, &env).unwrap();
    let ait = g.nodes.iter().position(|n| n.id == "ait-buy").unwrap();
    assert_eq!(checked.outputs[ait], Port::Dense { width: 32 });

    // The towers are not shared by the calibrator reading them: only what
    // the next steps read through the AIT modules is.
    let features = mtrec_core::FeatureSpec::dense_only((0..6).map(|i| format!("x{i}")).collect());
    let m = Model::build(&g, &features, &funnel3(), 0, 1, &dev()).unwrap();
    let mut shared: Vec<String> = m
        .shared_vars()
        .into_iter()
        .map(|(n, _)| n.split('.').next().unwrap().to_string())
        .collect();
    shared.dedup();
    assert_eq!(shared, ["ait-cart", "info-click", "q-cart", "q-click"]);
}

#[test]
fn no_calibrator_at_alpha_zero_with_a_regression_task_or_one_task() {
    let has_calibrator = |g: &GraphSpec| g.nodes.iter().any(|n| n.kind == "funnel-calibrator");
    assert!(!has_calibrator(&expand("alpha = 0.0", &funnel3()).unwrap()));
    let mixed = tasks(&[("click", TaskKind::Binary), ("amount", TaskKind::Regression)]);
    let g = expand("", &mixed).unwrap();
    assert!(!has_calibrator(&g));
    assert!(g.nodes.iter().any(|n| n.id == "ait-amount"));
    let one = expand("", &tasks(&[("click", TaskKind::Binary)])).unwrap();
    let ids: Vec<&str> = one.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["q-click", "tower-click"]);
}

#[test]
fn bad_parameters_name_their_key() {
    let err = |p: &str| expand(p, &funnel3()).unwrap_err().to_string();
    let e = err("info_units = [16]");
    assert!(e.contains("info_units") && e.contains("must equal"), "{e}");
    let e = err("alpha = -0.5");
    assert!(e.contains("alpha") && e.contains(">= 0"), "{e}");
    let e = err("task_units = []");
    assert!(e.contains("task_units"), "{e}");
    let e = err("alfa = 0.5");
    assert!(e.contains("alfa"), "{e}");
}

/// Builds a fusion node of `kind` with `params` over inputs of `widths`.
fn fusion(kind: &str, params: &str, widths: &[usize]) -> (Box<dyn Fusion>, ParamStore) {
    mtrec_aitm::link();
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 3, &dev());
    let io = NodeIo {
        inputs: widths.iter().map(|&width| Port::Dense { width }).collect(),
        experts: vec![],
    };
    let k = registry::component(kind).unwrap();
    let p = k.parse(&toml::from_str(params).unwrap()).unwrap();
    let env = GraphEnv {
        input_width: 2,
        tasks: funnel3(),
        domains: 0,
        features: Default::default(),
    };
    k.check(&p, &io, &env).unwrap();
    match k.build(&p, &io, &env, &pb.pp("n")).unwrap() {
        Component::Fusion(f) => (f, store),
        _ => panic!("`{kind}` is not a fusion"),
    }
}

fn set(store: &ParamStore, name: &str, values: &[f32]) {
    let (_, v) = store.all().into_iter().find(|(n, _)| n == name).unwrap();
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &dev()).unwrap())
        .unwrap();
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `z = sum_u w_u h1(u)`, `w = softmax(<h2(u), h3(u)> / sqrt(k))` over
/// u in {p, q}, k = 2, on 2 rows with every weight set by hand (`y = x W`,
/// W input-major):
/// W1 = [[1, 2], [0, 1]], W2 = [[0.5, 0], [1, -1]], W3 = [[1, 1], [0, 2]].
#[test]
fn ait_module_by_hand() {
    let (ait, store) = fusion("ait", "", &[2, 2]);
    let names: Vec<String> = store.all().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["n.h1.weight", "n.h2.weight", "n.h3.weight"]);
    set(&store, "n.h1.weight", &[1.0, 2.0, 0.0, 1.0]);
    set(&store, "n.h2.weight", &[0.5, 0.0, 1.0, -1.0]);
    set(&store, "n.h3.weight", &[1.0, 1.0, 0.0, 2.0]);
    let p = Tensor::new(&[[1.0f32, 0.0], [0.5, -1.0]], &dev()).unwrap();
    let q = Tensor::new(&[[0.0f32, 2.0], [1.0, 1.0]], &dev()).unwrap();
    let z: Vec<Vec<f32>> = ait.forward(&[p, q], &ForwardCtx::train()).unwrap().to_vec2().unwrap();

    // Row 0. p = (1, 0): h1 = (1, 2), h2 = (0.5, 0), h3 = (1, 1), <h2, h3> = 0.5.
    // q = (0, 2): h1 = (0, 2), h2 = (2, -2), h3 = (0, 4), <h2, h3> = -8.
    // w_p = sigmoid((0.5 + 8) / sqrt 2) = 0.997553; z = w_p (1, 2) + w_q (0, 2) = (w_p, 2).
    let w = sigmoid(8.5 / 2f64.sqrt());
    assert!((w - 0.997_552_9).abs() < 1e-6);
    let want0 = [w, 2.0];
    // Row 1. p = (0.5, -1): h1 = (0.5, 0), h2 = (-0.75, 1), h3 = (0.5, -1.5),
    // <h2, h3> = -1.875. q = (1, 1): h1 = (1, 3), h2 = (1.5, -1), h3 = (1, 3),
    // <h2, h3> = -1.5. w_p = sigmoid(-0.375 / sqrt 2) = 0.434094;
    // z = w_p (0.5, 0) + (1 - w_p) (1, 3) = (0.782953, 1.697717).
    let w = sigmoid(-0.375 / 2f64.sqrt());
    let want1 = [0.5 * w + (1.0 - w), 3.0 * (1.0 - w)];
    assert!((want1[0] - 0.782_952_8).abs() < 1e-6 && (want1[1] - 1.697_716_6).abs() < 1e-6);
    for (got, want) in [(&z[0], want0), (&z[1], want1)] {
        for j in 0..2 {
            assert!(
                (f64::from(got[j]) - want[j]).abs() < 1e-5,
                "{z:?} vs {want0:?} {want1:?}"
            );
        }
    }
}

#[test]
fn ait_checks_its_inputs() {
    mtrec_aitm::link();
    let k = registry::component("ait").unwrap();
    let p = k.parse(&toml::Table::new()).unwrap();
    let env = GraphEnv {
        input_width: 2,
        tasks: funnel3(),
        domains: 0,
        features: Default::default(),
    };
    let io = |widths: &[usize]| NodeIo {
        inputs: widths.iter().map(|&width| Port::Dense { width }).collect(),
        experts: vec![],
    };
    assert!(k.check(&p, &io(&[4]), &env).unwrap_err().contains("at least two"));
    assert!(k.check(&p, &io(&[4, 3]), &env).unwrap_err().contains("width mismatch"));
    let p8 = k.parse(&toml::from_str("dim = 8").unwrap()).unwrap();
    assert_eq!(k.check(&p8, &io(&[4, 4]), &env).unwrap(), Port::Dense { width: 8 });
}

/// Logits giving y = (0.5, 0.75, 0.8) and (0.75, 0.5, 0.6): violations
/// max(0.25, 0) + max(0.05, 0) = 0.30 and max(-0.25, 0) + max(0.1, 0) = 0.1,
/// mean 0.2, times alpha 0.6: 0.12. Its gradient by hand: with
/// y' = y (1 - y) and c = alpha / B = 0.3, row 0 (both pairs active):
/// d/da1 = -c y1' = -0.075, d/da2 = c y2' - c y2' = 0, d/da3 = c y3' = 0.048;
/// row 1 (second pair only): 0, -c y2' = -0.075, c y3' = 0.072.
#[test]
fn calibrator_by_hand_and_only_in_training() {
    let (cal, _) = fusion("funnel-calibrator", "", &[1, 1, 1]);
    let logits = [
        Var::new(&[[0.0f32], [3f32.ln()]], &dev()).unwrap(),
        Var::new(&[[3f32.ln()], [0.0]], &dev()).unwrap(),
        Var::new(&[[4f32.ln()], [1.5f32.ln()]], &dev()).unwrap(),
    ];
    let xs: Vec<Tensor> = logits.iter().map(|v| v.as_tensor().clone()).collect();
    let sink = Penalties::default();
    let out = cal
        .forward(&xs, &ForwardCtx::train().with_penalties(Some(&sink)))
        .unwrap();
    let rows: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        (rows[0] - 0.30).abs() < 1e-6 && (rows[1] - 0.1).abs() < 1e-6,
        "{rows:?}"
    );
    let terms = sink.into_inner();
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].name, mtrec_aitm::calibrator::PENALTY);
    let value = terms[0].value.to_scalar::<f32>().unwrap();
    assert!((value - 0.12).abs() < 1e-6, "{value}");
    let grads = terms[0].value.backward().unwrap();
    let want = [[-0.075f32, 0.0], [0.0, -0.075], [0.048, 0.072]];
    for (v, w) in logits.iter().zip(want) {
        let g: Vec<f32> = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            (g[0] - w[0]).abs() < 1e-6 && (g[1] - w[1]).abs() < 1e-6,
            "{g:?} vs {w:?}"
        );
    }

    // Evaluation adds nothing; neither does alpha = 0.
    let sink = Penalties::default();
    cal.forward(&xs, &ForwardCtx::eval().with_penalties(Some(&sink)))
        .unwrap();
    let (zero, _) = fusion("funnel-calibrator", "alpha = 0.0", &[1, 1, 1]);
    zero.forward(&xs, &ForwardCtx::train().with_penalties(Some(&sink)))
        .unwrap();
    assert!(sink.into_inner().is_empty());
}

/// In a model: the training pass carries the calibrator's term, equal to
/// alpha times the mean violation of the towers' outputs; the objective's
/// gradient differs from that of the same model at alpha = 0 (same weights)
/// by exactly the term's gradient, which reaches both towers.
#[test]
fn the_calibrator_changes_the_gradient_of_the_objective() {
    let data = funnel_data(64, 2, 2);
    let batch = data.batch(&(0..64).collect::<Vec<_>>(), &dev()).unwrap();
    let with = build("aitm", SMALL, &data, 5);
    let without = build("aitm", &format!("{SMALL}\nalpha = 0.0"), &data, 5);
    // The same weights in both; like's bias raised so that the funnel is
    // violated on many rows at the start.
    for m in [&with, &without] {
        set(m.params(), "tower-like.out.bias", &[2.0]);
    }

    let out = with.forward(&batch.inputs, true).unwrap();
    assert_eq!(out.penalties.len(), 1);
    let logits: Vec<Vec<f32>> = out.outputs.iter().map(|o| o.to_vec1().unwrap()).collect();
    let mean_violation = (0..64)
        .map(|r| (sigmoid(f64::from(logits[1][r])) - sigmoid(f64::from(logits[0][r]))).max(0.0))
        .sum::<f64>()
        / 64.0;
    assert!(mean_violation > 1e-4, "no violation at initialisation: a vacuous test");
    let term = f64::from(out.penalties[0].value.to_scalar::<f32>().unwrap());
    assert!(
        (term - 0.6 * mean_violation).abs() < 1e-6,
        "{term} vs {}",
        0.6 * mean_violation
    );
    assert!(without.forward(&batch.inputs, true).unwrap().penalties.is_empty());

    let objective = |m: &Model| {
        let l = task_losses(m, &batch).unwrap();
        let mut total = (&l.tasks[0] + &l.tasks[1]).unwrap();
        if let Some(p) = l.penalty {
            total = (total + p).unwrap();
        }
        total
    };
    let grad_of = |m: &Model, loss: &Tensor, name: &str| -> Vec<f32> {
        let grads = loss.backward().unwrap();
        let (_, v) = m.params().vars().into_iter().find(|(n, _)| n == name).unwrap();
        grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let penalty = |m: &Model| m.forward(&batch.inputs, true).unwrap().penalties.remove(0).value;
    for name in ["tower-click.out.weight", "tower-like.out.weight", "ait-like.h1.weight"] {
        let g_with = grad_of(&with, &objective(&with), name);
        let g_without = grad_of(&without, &objective(&without), name);
        let g_term = grad_of(&with, &penalty(&with), name);
        assert!(
            g_term.iter().any(|g| g.abs() > 1e-6),
            "{name}: the term has no gradient"
        );
        for ((a, b), c) in g_with.iter().zip(&g_without).zip(&g_term) {
            assert!((a - b - c).abs() < 1e-5, "{name}: {a} - {b} != {c}");
        }
    }
}

#[test]
fn gradients_reach_every_weight() {
    let data = funnel_data(64, 3, 3);
    let batch = data.batch(&(0..64).collect::<Vec<_>>(), &dev()).unwrap();
    for params in [SMALL.to_string(), format!("{SMALL}\nalpha = 0.0\nait_bias = true")] {
        let model = build("aitm", &params, &data, 1);
        let unchanged = unchanged_after_one_step(&model, &batch).unwrap();
        assert!(
            unchanged.is_empty(),
            "{params}: unchanged after one step: {unchanged:?}"
        );
    }
}

/// On funnel data (click -> like, like only after click): AITM's test AUC
/// and logloss on both steps beat the constant predictor (AUC 0.5, the
/// train positive rate's logloss) and the untrained model; printed beside
/// Shared-Bottom's at the same budget.
#[test]
fn learns_a_funnel() {
    let data = funnel_data(6000, 2, 4);
    let sp = split(data.rows(), [0.7, 0.1, 0.2], 1).unwrap();
    let metrics = |m: &Model| -> Vec<(f64, f64)> {
        let ev = evaluate(m, &data, &sp.test, 4096).unwrap();
        ev.tasks
            .iter()
            .map(|t| (t.metrics.auc.unwrap(), t.metrics.logloss.unwrap()))
            .collect()
    };
    let k = data.task_count();
    let constant: Vec<f64> = (0..k)
        .map(|t| {
            let label = |r: usize| f64::from(data.labels[r * k + t]);
            let rate = sp.train.iter().map(|&r| label(r)).sum::<f64>() / sp.train.len() as f64;
            sp.test
                .iter()
                .map(|&r| -(label(r) * rate.ln() + (1.0 - label(r)) * (1.0 - rate).ln()))
                .sum::<f64>()
                / sp.test.len() as f64
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 4,
        batch_size: 128,
        lr: 3e-3,
        patience: 0,
        seed: 1,
        ..TrainConfig::default()
    };
    let aitm = build("aitm", "task_units = [32, 16]\ninfo_units = [16]", &data, 1);
    let untrained = metrics(&aitm);
    train(&aitm, &data, &sp, &cfg, |_| {}).unwrap();
    let trained = metrics(&aitm);
    let sb = build("shared-bottom", "bottom_units = [32]\ntower_units = [16]", &data, 1);
    train(&sb, &data, &sp, &cfg, |_| {}).unwrap();
    eprintln!(
        "test (AUC, logloss): AITM {trained:?}, Shared-Bottom {:?}, untrained {untrained:?}, constant logloss {constant:?}",
        metrics(&sb)
    );
    for t in 0..k {
        let (auc, ll) = trained[t];
        assert!(
            auc > 0.7 && auc > untrained[t].0 + 0.1,
            "task {t}: {trained:?} vs {untrained:?}"
        );
        assert!(
            ll < 0.95 * constant[t] && ll < untrained[t].1,
            "task {t}: {trained:?} vs {constant:?}"
        );
    }
}
