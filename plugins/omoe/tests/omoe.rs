//! OMoE against MMoE in the expanded graph: OMoE has exactly one gate, read
//! by every task's tower; MMoE one gate per task, each read by its task's
//! tower only. Both over the same one expert bank.
//! And in a built model: a forward pass records one gate (OMoE) or one per
//! task (MMoE), each weighing the bank's experts.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::{registry, FeatureSpec, GraphEnv, GraphSpec, Inputs, Model, TaskInfo, TaskKind};

fn expand(arch: &str, tasks: usize) -> GraphSpec {
    mtrec_omoe::link();
    mtrec_mmoe::link();
    let env = GraphEnv {
        input_width: 5,
        tasks: (1..=tasks)
            .map(|i| TaskInfo {
                name: format!("t{i}"),
                kind: TaskKind::Binary,
            })
            .collect(),
        domains: 0,
        features: Default::default(),
    };
    let a = registry::architecture(arch).unwrap();
    a.expand(&a.defaults(), &env).unwrap()
}

/// The ids of the gate nodes, and per task tower (in task order) its input.
fn gates_and_tower_inputs(g: &GraphSpec) -> (Vec<&str>, Vec<&str>) {
    let gates = g
        .nodes
        .iter()
        .filter(|n| !n.experts.is_empty())
        .map(|n| n.id.as_str())
        .collect();
    let towers = g
        .nodes
        .iter()
        .filter(|n| n.task.is_some())
        .map(|n| n.inputs[0].as_str())
        .collect();
    (gates, towers)
}

#[test]
fn omoe_has_exactly_one_gate_and_mmoe_one_per_task() {
    for tasks in [1, 2, 3] {
        let omoe = expand("omoe", tasks);
        let (gates, towers) = gates_and_tower_inputs(&omoe);
        assert_eq!(gates, ["gate"], "OMoE, {tasks} tasks");
        assert_eq!(towers, vec!["gate"; tasks], "OMoE, {tasks} tasks");
        // A gate is a gate by its kind too, not only by having experts.
        let kinds: Vec<&str> = omoe.nodes.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "softmax-gate").count(), 1, "{kinds:?}");

        let mmoe = expand("mmoe", tasks);
        let (gates, towers) = gates_and_tower_inputs(&mmoe);
        let want: Vec<String> = (1..=tasks).map(|i| format!("gate-t{i}")).collect();
        assert_eq!(gates, want, "MMoE, {tasks} tasks");
        assert_eq!(towers, want, "MMoE, {tasks} tasks");

        // Otherwise the same model: one expert bank, mixed by every gate.
        for g in [&omoe, &mmoe] {
            let banks: Vec<&str> = g
                .nodes
                .iter()
                .filter(|n| n.kind == "mlp-experts")
                .map(|n| n.id.as_str())
                .collect();
            assert_eq!(banks, ["experts"]);
            assert!(g
                .nodes
                .iter()
                .filter(|n| !n.experts.is_empty())
                .all(|n| n.experts == ["experts"]));
        }
    }
}

#[test]
fn a_forward_pass_records_one_gate_for_omoe_and_one_per_task_for_mmoe() {
    let tasks = 3;
    let infos: Vec<TaskInfo> = (1..=tasks)
        .map(|i| TaskInfo {
            name: format!("t{i}"),
            kind: TaskKind::Binary,
        })
        .collect();
    let features = FeatureSpec::dense_only((0..5).map(|i| format!("x{i}")).collect());
    let x = Tensor::from_vec(
        (0..20).map(|v| v as f32 / 10.0).collect::<Vec<_>>(),
        (4, 5),
        &Device::Cpu,
    )
    .unwrap();
    let inputs = Inputs::new(None, Some(x), None).unwrap();
    for (arch, want) in [
        ("omoe", vec!["gate".to_string()]),
        ("mmoe", (1..=tasks).map(|i| format!("gate-t{i}")).collect()),
    ] {
        let model = Model::build(&expand(arch, tasks), &features, &infos, 0, 1, &Device::Cpu).unwrap();
        let out = model.forward(&inputs, false).unwrap();
        let gates: Vec<&str> = out.gates.iter().map(|g| g.node.as_str()).collect();
        assert_eq!(gates, want, "{arch}");
        for g in &out.gates {
            // MMoE's default bank: 8 experts, every row's weights summing to 1.
            assert_eq!(g.experts.len(), 8, "{arch}");
            let sums = g.weights.sum(1).unwrap().to_vec1::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{arch}: {sums:?}");
        }
    }
}
