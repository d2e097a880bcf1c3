//! PLE: the graph's gates per layer, the paper's progressive routing checked
//! numerically, gradients reaching every weight, parameter errors, and that
//! it learns (test MSE against a constant predictor and the untrained model).
#![allow(clippy::unwrap_used)]

mod support;

use candle_core::{Device, Tensor};
use mtrec_core::{registry, FeatureSpec, GraphEnv, Inputs, Model, ModelOutput, TaskInfo, TaskKind};
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

fn expand(arch: &str, p: &toml::Table, d: usize, tasks: &[TaskInfo]) -> mtrec_core::Result<mtrec_core::GraphSpec> {
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
    let graph = expand("ple", &params(p), d, tasks).unwrap();
    let features = FeatureSpec::dense_only((0..d).map(|i| format!("x{i}")).collect());
    Model::build(&graph, &features, tasks, 0, 7, &Device::Cpu).unwrap()
}

/// `rows` x `d` inputs in [-1, 1], fixed.
fn inputs(rows: usize, d: usize) -> Inputs {
    let v: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 23) as f32 / 11.0) - 1.0).collect();
    Inputs::new(None, Some(Tensor::from_vec(v, (rows, d), &Device::Cpu).unwrap()), None).unwrap()
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

/// Adds `delta` to the even elements of the variable and `-delta` to the
/// odd ones (not the same shift everywhere: a gate's softmax would cancel a
/// shift common to all its columns); the same call with `-delta` undoes it.
fn perturb(model: &Model, name: &str, delta: f32) {
    let v = var(model, name);
    let pattern: Vec<f32> = (0..v.elem_count())
        .map(|i| if i % 2 == 0 { delta } else { -delta })
        .collect();
    let pattern = Tensor::from_vec(pattern, v.dims(), &Device::Cpu).unwrap();
    v.set(&(v.as_tensor() + pattern).unwrap()).unwrap();
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>], task: usize) -> f32 {
    a[task]
        .iter()
        .zip(&b[task])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn gate_weights(out: &ModelOutput, node: &str) -> Vec<Vec<f32>> {
    out.gates
        .iter()
        .find(|g| g.node == node)
        .unwrap_or_else(|| panic!("no gate `{node}`"))
        .weights
        .to_vec2()
        .unwrap()
}

/// K + 1 gates on every layer but the last, K on the last; task gates over
/// `m_k + m_s` experts (their own, then the shared ones), the shared gate
/// over all `K m_k + m_s`; selector widths as routed.
#[test]
fn gate_counts_and_widths_per_layer() {
    let (k, mk, ms, d, u, levels) = (3usize, 2usize, 3usize, 5usize, 4usize, 3usize);
    for next in ["paper", "concat", "sum", "product", "concat-sum-product"] {
        let model = build(
            &format!(
                "levels = {levels}\nspecific_experts = {mk}\nshared_experts = {ms}\nexpert_units = [6, {u}]\n\
                 tower_units = [3]\nnext_input = \"{next}\""
            ),
            d,
            &tasks(k),
        );
        let out = model.forward(&inputs(4, d), false).unwrap();
        // Selector width of layers 2.. : a gate output (paper) or the fusion.
        let sel = match next {
            "paper" | "sum" | "product" => u,
            "concat" => (k + 1) * u,
            _ => (k + 1) * u + 2 * u,
        };
        for j in 1..=levels {
            let gates: Vec<_> = out
                .gates
                .iter()
                .filter(|g| g.node.starts_with(&format!("l{j}-")))
                .collect();
            let want = if j < levels { k + 1 } else { k };
            assert_eq!(
                gates.len(),
                want,
                "{next}: layer {j} gates {:?}",
                gates.iter().map(|g| &g.node).collect::<Vec<_>>()
            );
            let d_sel = if j == 1 { d } else { sel };
            for g in gates {
                let shared = g.node.ends_with("-shared");
                let n = if shared { k * mk + ms } else { mk + ms };
                assert_eq!(g.experts.len(), n, "{next}: {}", g.node);
                assert_eq!(g.weights.dims(), [4, n], "{next}: {}", g.node);
                for row in g.weights.to_vec2::<f32>().unwrap() {
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                }
                assert_eq!(
                    var(&model, &format!("{}.weight", g.node)).dims(),
                    [d_sel, n],
                    "{next}: {}",
                    g.node
                );
                // Labels: the task's own experts first, then the shared ones.
                if !shared {
                    let t = g.node.trim_start_matches(&format!("l{j}-gate-"));
                    assert!(
                        g.experts[0].starts_with(&format!("l{j}-experts-{t}#")),
                        "{:?}",
                        g.experts
                    );
                    assert!(
                        g.experts[mk].starts_with(&format!("l{j}-experts-shared#")),
                        "{:?}",
                        g.experts
                    );
                } else {
                    assert_eq!(g.experts[k * mk], format!("l{j}-experts-shared#0"));
                }
            }
        }
        assert!(out
            .gates
            .iter()
            .all(|g| !g.node.starts_with(&format!("l{}-", levels + 1))));
    }
}

/// The routing as written in the graph: paper routing reads the previous
/// layer's own gate outputs, a fusion reads one node of all of them.
#[test]
fn routing_in_the_graph() {
    let t = tasks(2);
    let inputs_of = |g: &mtrec_core::GraphSpec, id: &str| -> Vec<String> {
        g.nodes.iter().find(|n| n.id == id).unwrap().inputs.clone()
    };
    let g = expand("ple", &params("levels = 2"), 5, &t).unwrap();
    for owner in ["task1", "task2", "shared"] {
        assert_eq!(inputs_of(&g, &format!("l1-experts-{owner}")), ["input"]);
        assert_eq!(inputs_of(&g, &format!("l1-gate-{owner}")), ["input"]);
        let prev = vec![format!("l1-gate-{owner}")];
        assert_eq!(inputs_of(&g, &format!("l2-experts-{owner}")), prev);
        if owner != "shared" {
            assert_eq!(inputs_of(&g, &format!("l2-gate-{owner}")), prev);
        }
    }
    assert!(g.nodes.iter().all(|n| n.id != "l2-gate-shared"));
    assert_eq!(inputs_of(&g, "tower-task1"), ["l2-gate-task1"]);
    let g = expand("ple", &params("levels = 2\nnext_input = \"sum\""), 5, &t).unwrap();
    let fusion = g.nodes.iter().find(|n| n.id == "l2-input").unwrap();
    assert_eq!(fusion.kind, "sum");
    assert_eq!(fusion.inputs, ["l1-gate-task1", "l1-gate-task2", "l1-gate-shared"]);
    for owner in ["task1", "task2", "shared"] {
        assert_eq!(inputs_of(&g, &format!("l2-experts-{owner}")), ["l2-input"]);
    }
    for owner in ["task1", "task2"] {
        assert_eq!(inputs_of(&g, &format!("l2-gate-{owner}")), ["l2-input"]);
    }
}

/// Two tasks, two layers, one expert per module, gates with a bias so that
/// a gate can be pinned (a bias of -1e4 gives a softmax weight of exactly 0).
/// Layer-1 shared gate columns: [task1's expert, task2's expert, shared].
const TWO_LAYER: &str = "levels = 2\nspecific_experts = 1\nshared_experts = 1\nexpert_units = [4]\n\
                         tower_units = [4]\ngate_bias = true";

/// Task 1's output depends on task 2's layer-1 experts, and only through the
/// shared gate: with the shared gate's weight on them pinned to 0, they no
/// longer reach task 1 at all (they would if task 1's layer-2 experts or gate
/// read task 2's branch, a fusion, or anything but task 1's own branch and
/// the shared branch).
#[test]
fn other_task_layer1_expert_reaches_a_task_only_through_the_shared_gate() {
    let model = build(TWO_LAYER, 5, &tasks(2));
    let x = inputs(6, 5);
    let base = outputs(&model.forward(&x, false).unwrap());
    perturb(&model, "l1-experts-task2.0.weight", 0.5);
    let moved = outputs(&model.forward(&x, false).unwrap());
    assert!(
        max_diff(&base, &moved, 0) > 1e-5,
        "task 2's layer-1 expert does not reach task 1"
    );
    assert!(max_diff(&base, &moved, 1) > 1e-5);
    perturb(&model, "l1-experts-task2.0.weight", -0.5);

    // The shared gate ignores task 2's layer-1 expert.
    set(&model, "l1-gate-shared.bias", &[0.0, -1e4, 0.0]);
    let out = model.forward(&x, false).unwrap();
    assert!(gate_weights(&out, "l1-gate-shared").iter().all(|r| r[1] == 0.0));
    let base = outputs(&out);
    perturb(&model, "l1-experts-task2.0.weight", 0.5);
    let moved = outputs(&model.forward(&x, false).unwrap());
    assert_eq!(
        max_diff(&base, &moved, 0),
        0.0,
        "task 2's layer-1 expert reaches task 1 around the shared gate"
    );
    assert!(max_diff(&base, &moved, 1) > 1e-5);
}

/// Task 1's layer-2 gate and layer-2 experts read task 1's layer-1 output
/// (not the raw input): with the shared branch ignoring task 1's layer-1
/// expert, that expert still moves task 1's layer-2 gate weights and, with
/// the layer-2 gate pinned to task 1's own expert, task 1's output; it does
/// not reach task 2.
#[test]
fn layer2_gate_and_experts_read_the_task_branch() {
    let model = build(TWO_LAYER, 5, &tasks(2));
    let x = inputs(6, 5);
    set(&model, "l1-gate-shared.bias", &[-1e4, 0.0, 0.0]);
    let before = model.forward(&x, false).unwrap();
    perturb(&model, "l1-experts-task1.0.weight", 0.5);
    let after = model.forward(&x, false).unwrap();
    let (a, b) = (
        gate_weights(&before, "l2-gate-task1"),
        gate_weights(&after, "l2-gate-task1"),
    );
    let moved = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(
        moved > 1e-5,
        "task 1's layer-2 gate does not read task 1's layer-1 output"
    );
    assert_eq!(
        max_diff(&outputs(&before), &outputs(&after), 1),
        0.0,
        "task 1's expert reaches task 2"
    );
    perturb(&model, "l1-experts-task1.0.weight", -0.5);

    // Layer-2 gate of task 1: all weight on task 1's layer-2 expert, constant.
    set(&model, "l2-gate-task1.bias", &[0.0, -1e4]);
    let base = outputs(&model.forward(&x, false).unwrap());
    perturb(&model, "l1-experts-task1.0.weight", 0.5);
    let out = model.forward(&x, false).unwrap();
    assert!(gate_weights(&out, "l2-gate-task1").iter().all(|r| r == &[1.0, 0.0]));
    let moved = outputs(&out);
    assert!(
        max_diff(&base, &moved, 0) > 1e-5,
        "task 1's layer-2 experts do not read task 1's layer-1 output"
    );
    assert_eq!(max_diff(&base, &moved, 1), 0.0);
}

/// Layer-2 (last layer) task-specific experts and gates belong to their task
/// alone: perturbing task 2's does not change task 1's output at all.
#[test]
fn other_task_last_layer_expert_and_gate_do_not_reach_a_task() {
    let model = build(TWO_LAYER, 5, &tasks(2));
    let x = inputs(6, 5);
    let base = outputs(&model.forward(&x, false).unwrap());
    for name in [
        "l2-experts-task2.0.weight",
        "l2-experts-task2.0.bias",
        "l2-gate-task2.weight",
    ] {
        perturb(&model, name, 0.5);
        let moved = outputs(&model.forward(&x, false).unwrap());
        assert_eq!(max_diff(&base, &moved, 0), 0.0, "{name} reaches task 1");
        assert!(max_diff(&base, &moved, 1) > 1e-5, "{name} does not reach task 2");
        perturb(&model, name, -0.5);
    }
}

fn synthetic(rows: usize, dim: usize, kind: TaskKind) -> Dataset {
    MmoeSynthetic {
        rows,
        dim,
        kind,
        seed: 3,
        ..MmoeSynthetic::default()
    }
    .generate()
    .unwrap()
}

fn build_for(data: &Dataset, model: &toml::Table, arch: &str) -> Model {
    let names = data.dense.as_ref().unwrap().names.clone();
    let graph = expand(arch, model, names.len(), &data.tasks).unwrap();
    Model::build(&graph, &FeatureSpec::dense_only(names), &data.tasks, 0, 1, &Device::Cpu).unwrap()
}

/// After one optimizer step every trainable variable has changed (no silent
/// gradient cut), for the paper's routing and every fusion, three layers.
#[test]
fn every_variable_changes_after_one_step() {
    for kind in [TaskKind::Binary, TaskKind::Regression] {
        let data = synthetic(64, 12, kind);
        let rows: Vec<usize> = (0..64).collect();
        let batch = data.batch(&rows, &Device::Cpu).unwrap();
        for next in ["paper", "concat", "sum", "product", "concat-sum-product"] {
            let p = params(&format!(
                "levels = 3\nexpert_units = [8]\ntower_units = [8]\nnext_input = \"{next}\""
            ));
            let model = build_for(&data, &p, "ple");
            let unchanged = unchanged_after_one_step(&model, &batch).unwrap();
            assert!(
                unchanged.is_empty(),
                "{next} ({kind:?}): unchanged after one step: {unchanged:?}"
            );
        }
    }
}

/// configs/ple.toml's model, with one expert per module (the paper's
/// expert-utilisation setup), builds and learns: test MSE well below the
/// constant predictor's and the untrained model's.
#[test]
fn config_with_one_expert_per_module_learns() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("configs/ple.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let mut model = config["model"].as_table().unwrap().clone();
    assert_eq!(model.remove("arch").unwrap().as_str(), Some("ple"));
    model.insert("specific_experts".into(), 1.into());
    model.insert("shared_experts".into(), 1.into());
    let data = synthetic(2000, 20, TaskKind::Regression);
    let m = build_for(&data, &model, "ple");
    let out = m
        .forward(&data.batch(&[0, 1, 2], &Device::Cpu).unwrap().inputs, false)
        .unwrap();
    let widths: Vec<(String, usize)> = out.gates.iter().map(|g| (g.node.clone(), g.experts.len())).collect();
    assert_eq!(
        widths,
        [
            ("l1-gate-task1".to_string(), 2),
            ("l1-gate-task2".to_string(), 2),
            ("l1-gate-shared".to_string(), 3),
            ("l2-gate-task1".to_string(), 2),
            ("l2-gate-task2".to_string(), 2),
        ]
    );
    // Measured test MSE: trained 4.68 / 4.18, constant predictor 9.14 / 8.60,
    // untrained 12.2 / 14.9 (ratios to the constant 0.51 / 0.49; asserted < 0.7).
    support::assert_learns(&m, &data);
}

fn expand_err(arch: &str, p: &str) -> String {
    match expand(arch, &params(p), 5, &tasks(2)) {
        Ok(_) => panic!("expected an error for {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parameter_errors_are_named() {
    let e = expand_err("ple", "level = 3");
    assert!(
        e.contains("architecture `ple`") && e.contains("unknown field `level`"),
        "{e}"
    );
    assert!(e.contains("levels"), "{e}");
    let e = expand_err("ple", "next_input = \"mean\"");
    assert!(
        e.contains("unknown variant `mean`") && e.contains("concat-sum-product"),
        "{e}"
    );
    let e = expand_err("ple", "levels = 0");
    assert!(e.contains("`levels` must be at least 1"), "{e}");
    let e = expand_err("ple", "specific_experts = 0\nshared_experts = 0");
    assert!(e.contains("`specific_experts` and `shared_experts` are both 0"), "{e}");
    let e = expand_err("ple", "expert_units = []");
    assert!(e.contains("`expert_units` must list at least one layer width"), "{e}");
    let named_shared = vec![TaskInfo {
        name: "shared".into(),
        kind: TaskKind::Binary,
    }];
    let e = expand("ple", &toml::Table::new(), 5, &named_shared)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a task is named `shared`"), "{e}");
}

/// Without task-specific or without shared experts the graph still builds;
/// with no shared experts and the paper's routing there is no shared gate.
#[test]
fn one_kind_of_expert_only() {
    let t = tasks(2);
    let g = expand("ple", &params("specific_experts = 0"), 5, &t).unwrap();
    assert!(g.nodes.iter().all(|n| !n.id.contains("experts-task")));
    let model = build("specific_experts = 0\ntower_units = [4]", 5, &t);
    let out = model.forward(&inputs(3, 5), false).unwrap();
    assert_eq!(out.gates.len(), 5);
    let model = build("shared_experts = 0\ntower_units = [4]", 5, &t);
    let out = model.forward(&inputs(3, 5), false).unwrap();
    assert_eq!(
        out.gates.iter().map(|g| g.node.as_str()).collect::<Vec<_>>(),
        ["l1-gate-task1", "l1-gate-task2", "l2-gate-task1", "l2-gate-task2"]
    );
    let model = build("shared_experts = 0\ntower_units = [4]\nnext_input = \"concat\"", 5, &t);
    let out = model.forward(&inputs(3, 5), false).unwrap();
    assert_eq!(out.gates.len(), 5);
}

/// The template's defaults: two levels, towers [256, 128, 64]; `defaults()`
/// parses back to the same graph as `{}`.
#[test]
fn defaults_round_trip() {
    mtrec_ple::link();
    let arch = registry::architecture("ple").unwrap();
    let d = arch.defaults();
    assert_eq!(d["levels"].as_integer(), Some(2));
    assert_eq!(d["next_input"].as_str(), Some("paper"));
    let t = tasks(2);
    assert_eq!(
        expand("ple", &d, 5, &t).unwrap(),
        expand("ple", &toml::Table::new(), 5, &t).unwrap()
    );
    let g = expand("ple", &d, 5, &t).unwrap();
    let tower = g.nodes.iter().find(|n| n.id == "tower-task1").unwrap();
    assert_eq!(tower.params["units"], toml::Value::try_from([256, 128, 64]).unwrap());
}
