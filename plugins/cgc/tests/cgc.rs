//! CGC: a forward pass checked against a computation by hand, the gates,
//! task isolation, gradients reaching every weight, parameter errors, and
//! that it learns (test MSE against a constant predictor and the untrained
//! model).
#![allow(clippy::unwrap_used)]

#[path = "../../ple/tests/support/mod.rs"]
mod support;

use candle_core::{Device, Tensor};
use mtrec_core::{registry, FeatureSpec, GraphEnv, GraphSpec, Inputs, Model, ModelOutput, TaskInfo, TaskKind};
use mtrec_data::{Dataset, MmoeSynthetic};
use mtrec_train::check::unchanged_after_one_step;

fn tasks(k: usize) -> Vec<TaskInfo> {
    (1..=k)
        .map(|i| TaskInfo {
            name: format!("task{i}"),
            kind: TaskKind::Regression,
        })
        .collect()
}

fn params(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn expand(arch: &str, p: &toml::Table, d: usize, tasks: &[TaskInfo]) -> mtrec_core::Result<GraphSpec> {
    mtrec_cgc::link();
    mtrec_ple::link();
    let env = GraphEnv {
        input_width: d,
        tasks: tasks.to_vec(),
        domains: 0,
        features: Default::default(),
    };
    registry::architecture(arch)?.expand(p, &env)
}

fn build(p: &str, d: usize, tasks: &[TaskInfo]) -> Model {
    let graph = expand("cgc", &params(p), d, tasks).unwrap();
    let features = FeatureSpec::dense_only((0..d).map(|i| format!("x{i}")).collect());
    Model::build(&graph, &features, tasks, 0, 7, &Device::Cpu).unwrap()
}

fn inputs(rows: &[&[f32]]) -> Inputs {
    let d = rows[0].len();
    let v: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Inputs::new(
        None,
        Some(Tensor::from_vec(v, (rows.len(), d), &Device::Cpu).unwrap()),
        None,
    )
    .unwrap()
}

fn outputs(out: &ModelOutput) -> Vec<Vec<f32>> {
    out.outputs.iter().map(|t| t.to_vec1().unwrap()).collect()
}

fn var(model: &Model, name: &str) -> candle_core::Var {
    let names: Vec<String> = model.params().vars().into_iter().map(|(n, _)| n).collect();
    model
        .params()
        .vars()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no variable `{name}`; have {names:?}"))
}

fn set(model: &Model, name: &str, values: &[f32]) {
    let v = var(model, name);
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() < 1e-5
}

/// Two tasks, input width 2, one expert per module of 2 units, linear towers.
/// With x = (1, 2):
/// - task 1's expert: relu(x I + (0, -1)) = (1, 1);
/// - task 2's expert: relu(x [[0, 1], [1, 0]]) = (2, 1);
/// - shared expert: relu(x [[1, 1], [-1, 0]]) = relu(-1, 1) = (0, 1);
/// - task 1's gate: W = 0, weights (1/2, 1/2), g_1 = (1/2, 1);
///   tower 1: (1, 2) . g_1 + 1/2 = 3;
/// - task 2's gate: W = [[1, 0], [0, 0]], logits (1, 0), weights
///   (s, 1 - s) with s = e / (1 + e), g_2 = (2s, 1);
///   tower 2: (1, -1) . g_2 = 2s - 1 = tanh(1/2).
///
/// With x = (-1, 1/2): experts (0, 0), (1/2, 0), (0, 0); g_1 = 0, y_1 = 1/2;
/// task 2's logits (-1, 0), weights (1 - s, s), y_2 = (1 - s) / 2.
#[test]
fn forward_matches_a_computation_by_hand() {
    let model = build(
        "specific_experts = 1\nshared_experts = 1\nexpert_units = [2]\ntower_units = []",
        2,
        &tasks(2),
    );
    let names: Vec<String> = model.params().vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "l1-experts-shared.0.bias",
            "l1-experts-shared.0.weight",
            "l1-experts-task1.0.bias",
            "l1-experts-task1.0.weight",
            "l1-experts-task2.0.bias",
            "l1-experts-task2.0.weight",
            "l1-gate-task1.weight",
            "l1-gate-task2.weight",
            "tower-task1.out.bias",
            "tower-task1.out.weight",
            "tower-task2.out.bias",
            "tower-task2.out.weight",
        ]
    );
    // Weights are stored input-major: [in, out] (experts [n, in, out]).
    set(&model, "l1-experts-task1.0.weight", &[1.0, 0.0, 0.0, 1.0]);
    set(&model, "l1-experts-task1.0.bias", &[0.0, -1.0]);
    set(&model, "l1-experts-task2.0.weight", &[0.0, 1.0, 1.0, 0.0]);
    set(&model, "l1-experts-task2.0.bias", &[0.0, 0.0]);
    set(&model, "l1-experts-shared.0.weight", &[1.0, 1.0, -1.0, 0.0]);
    set(&model, "l1-experts-shared.0.bias", &[0.0, 0.0]);
    set(&model, "l1-gate-task1.weight", &[0.0, 0.0, 0.0, 0.0]);
    set(&model, "l1-gate-task2.weight", &[1.0, 0.0, 0.0, 0.0]);
    set(&model, "tower-task1.out.weight", &[1.0, 2.0]);
    set(&model, "tower-task1.out.bias", &[0.5]);
    set(&model, "tower-task2.out.weight", &[1.0, -1.0]);
    set(&model, "tower-task2.out.bias", &[0.0]);

    let out = model.forward(&inputs(&[&[1.0, 2.0], &[-1.0, 0.5]]), false).unwrap();
    let y = outputs(&out);
    let e = std::f64::consts::E;
    let s = e / (1.0 + e);
    assert!(close(y[0][0], 3.0) && close(y[0][1], 0.5), "{y:?}");
    assert!(
        close(y[1][0], 0.5f64.tanh()) && close(y[1][1], (1.0 - s) / 2.0),
        "{y:?}"
    );
    let g2: Vec<Vec<f32>> = out.gates[1].weights.to_vec2().unwrap();
    assert_eq!(out.gates[1].node, "l1-gate-task2");
    assert_eq!(out.gates[1].experts, ["l1-experts-task2#0", "l1-experts-shared#0"]);
    assert!(
        close(g2[0][0], s) && close(g2[0][1], 1.0 - s) && close(g2[1][0], 1.0 - s),
        "{g2:?}"
    );
}

/// K gates (no shared gate), each over `m_k + m_s` experts, reading the input.
#[test]
fn one_gate_per_task_over_its_own_and_the_shared_experts() {
    let (k, mk, ms, d) = (3, 2, 1, 5);
    let model = build(
        &format!("specific_experts = {mk}\nshared_experts = {ms}\ntower_units = [4]"),
        d,
        &tasks(k),
    );
    let row: &[f32] = &[0.1, 0.2, -0.3, 0.4, 0.5];
    let out = model.forward(&inputs(&[row; 3]), false).unwrap();
    assert_eq!(
        out.gates.iter().map(|g| g.node.as_str()).collect::<Vec<_>>(),
        ["l1-gate-task1", "l1-gate-task2", "l1-gate-task3"]
    );
    for (i, g) in out.gates.iter().enumerate() {
        assert_eq!(g.weights.dims(), [3, mk + ms]);
        assert_eq!(
            g.experts,
            [
                format!("l1-experts-task{}#0", i + 1),
                format!("l1-experts-task{}#1", i + 1),
                "l1-experts-shared#0".to_string()
            ]
        );
        assert_eq!(var(&model, &format!("{}.weight", g.node)).dims(), [d, mk + ms]);
    }
}

/// CGC is PLE with one level: the same graph.
#[test]
fn cgc_is_ple_with_one_level() {
    let t = tasks(2);
    let p = "specific_experts = 3\nshared_experts = 1\nexpert_units = [8, 4]\ntower_units = [5]\ngate_bias = true";
    let cgc = expand("cgc", &params(p), 6, &t).unwrap();
    let ple = expand("ple", &params(&format!("{p}\nlevels = 1")), 6, &t).unwrap();
    assert_eq!(cgc, ple);
    // No fusion and no shared gate with one level, whatever `next_input` says.
    let ple = expand(
        "ple",
        &params(&format!("{p}\nlevels = 1\nnext_input = \"concat\"")),
        6,
        &t,
    )
    .unwrap();
    assert_eq!(cgc, ple);
}

/// Task 2's experts, gate and tower never reach task 1's output.
#[test]
fn other_task_experts_do_not_reach_a_task() {
    let model = build("tower_units = [4]", 3, &tasks(2));
    let x = inputs(&[&[0.3, -0.2, 0.9], &[-0.5, 0.1, 0.4]]);
    let base = outputs(&model.forward(&x, false).unwrap());
    for name in [
        "l1-experts-task2.0.weight",
        "l1-gate-task2.weight",
        "l1-experts-shared.0.weight",
    ] {
        let v = var(&model, name);
        let old = v.as_tensor().copy().unwrap();
        let pattern: Vec<f32> = (0..v.elem_count())
            .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        v.set(&(&old + Tensor::from_vec(pattern, v.dims(), &Device::Cpu).unwrap()).unwrap())
            .unwrap();
        let moved = outputs(&model.forward(&x, false).unwrap());
        let diff = |k: usize| {
            base[k]
                .iter()
                .zip(&moved[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        };
        if name.contains("shared") {
            assert!(diff(0) > 1e-5 && diff(1) > 1e-5, "{name} must reach both tasks");
        } else {
            assert_eq!(diff(0), 0.0, "{name} reaches task 1");
            assert!(diff(1) > 1e-5, "{name} does not reach task 2");
        }
        v.set(&old).unwrap();
    }
}

fn synthetic(rows: usize, dim: usize, kind: TaskKind) -> Dataset {
    MmoeSynthetic {
        rows,
        dim,
        kind,
        seed: 5,
        ..MmoeSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn build_for(data: &Dataset, model: &toml::Table) -> Model {
    let names = data.dense.as_ref().unwrap().names.clone();
    let graph = expand("cgc", model, names.len(), &data.tasks).unwrap();
    Model::build(&graph, &FeatureSpec::dense_only(names), &data.tasks, 0, 1, &Device::Cpu).unwrap()
}

#[test]
fn every_variable_changes_after_one_step() {
    for kind in [TaskKind::Binary, TaskKind::Regression] {
        let data = synthetic(64, 12, kind);
        let rows: Vec<usize> = (0..64).collect();
        let batch = data.batch(&rows, &Device::Cpu).unwrap();
        for p in [
            "",
            "specific_experts = 1\nshared_experts = 1\ngate_bias = true\ntower_units = [8]",
        ] {
            let model = build_for(&data, &params(p));
            let unchanged = unchanged_after_one_step(&model, &batch).unwrap();
            assert!(
                unchanged.is_empty(),
                "{p:?} ({kind:?}): unchanged after one step: {unchanged:?}"
            );
        }
    }
}

/// configs/cgc.toml's model, with one expert per module, builds and learns:
/// test MSE well below the constant predictor's and the untrained model's.
#[test]
fn config_with_one_expert_per_module_learns() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("configs/cgc.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let mut model = config["model"].as_table().unwrap().clone();
    assert_eq!(model.remove("arch").unwrap().as_str(), Some("cgc"));
    model.insert("specific_experts".into(), 1.into());
    model.insert("shared_experts".into(), 1.into());
    let data = synthetic(2000, 20, TaskKind::Regression);
    let m = build_for(&data, &model);
    // Measured test MSE: trained 1.64 / 1.31, constant predictor 2.74 / 3.37,
    // untrained 2.90 / 3.47 (ratios to the constant 0.60 / 0.39; asserted < 0.7).
    support::assert_learns(&m, &data);
}

fn expand_err(p: &str) -> String {
    match expand("cgc", &params(p), 5, &tasks(2)) {
        Ok(_) => panic!("expected an error for {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parameter_errors_are_named() {
    let e = expand_err("shared_expert = 2");
    assert!(
        e.contains("architecture `cgc`") && e.contains("unknown field `shared_expert`"),
        "{e}"
    );
    // `levels` is PLE's: CGC has exactly one.
    let e = expand_err("levels = 2");
    assert!(e.contains("unknown field `levels`"), "{e}");
    let e = expand_err("specific_experts = 0\nshared_experts = 0");
    assert!(
        e.contains("architecture `cgc`") && e.contains("`specific_experts` and `shared_experts` are both 0"),
        "{e}"
    );
}

#[test]
fn defaults_round_trip() {
    mtrec_cgc::link();
    let arch = registry::architecture("cgc").unwrap();
    let d = arch.defaults();
    assert!(!d.contains_key("levels") && !d.contains_key("next_input"));
    let t = tasks(2);
    assert_eq!(
        expand("cgc", &d, 5, &t).unwrap(),
        expand("cgc", &toml::Table::new(), 5, &t).unwrap()
    );
}
