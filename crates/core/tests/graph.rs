//! Graph validation and the runtime, on the core's built-in components.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::graph::validate;
use mtrec_core::{FeatureSpec, GraphEnv, GraphSpec, Inputs, Model, NodeSpec, TaskInfo, TaskKind, INPUT};

fn tasks() -> Vec<TaskInfo> {
    ["a", "b"]
        .iter()
        .map(|n| TaskInfo {
            name: n.to_string(),
            kind: TaskKind::Binary,
        })
        .collect()
}

fn env() -> GraphEnv {
    GraphEnv {
        input_width: 6,
        tasks: tasks(),
        domains: 0,
        features: Default::default(),
    }
}

/// A small MMoE: 3 experts of 4 units, one gate and tower per task.
fn mmoe() -> GraphSpec {
    let mut nodes = vec![NodeSpec::new("experts", "mlp-experts")
        .input(INPUT)
        .param("count", 3)
        .param("units", [4])];
    for t in ["a", "b"] {
        nodes.push(
            NodeSpec::new(format!("gate-{t}"), "softmax-gate")
                .input(INPUT)
                .experts(["experts"]),
        );
        nodes.push(
            NodeSpec::new(format!("tower-{t}"), "mlp-tower")
                .input(format!("gate-{t}"))
                .task(t)
                .param("units", [2]),
        );
    }
    GraphSpec { nodes }
}

fn err_of(spec: &GraphSpec) -> String {
    match validate(spec, &env()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_graph_passes_with_ports() {
    let g = validate(&mmoe(), &env()).unwrap();
    assert_eq!(g.towers.len(), 2);
    assert_eq!(g.outputs[0], mtrec_core::Port::Bank { count: 3, width: 4 });
}

#[test]
fn unknown_input_names_it() {
    let mut g = mmoe();
    g.nodes[1].inputs = vec!["expertz".into()];
    let e = err_of(&g);
    assert!(
        e.contains("graph node `gate-a`") && e.contains("unknown input `expertz`"),
        "{e}"
    );
}

#[test]
fn unknown_kind_lists_known_kinds() {
    let mut g = mmoe();
    g.nodes[0].kind = "mlp-expertz".into();
    let e = err_of(&g);
    assert!(
        e.contains("unknown component kind `mlp-expertz`") && e.contains("mlp-experts"),
        "{e}"
    );
}

#[test]
fn cycle_is_named() {
    let mut g = mmoe();
    g.nodes.push(NodeSpec::new("x", "mlp").input("y").param("units", [2]));
    g.nodes.push(NodeSpec::new("y", "mlp").input("x").param("units", [2]));
    let e = err_of(&g);
    assert!(
        e.contains("cycle: ") && e.contains("x -> y") || e.contains("y -> x"),
        "{e}"
    );
}

#[test]
fn gate_over_zero_experts() {
    let mut g = mmoe();
    g.nodes[1].experts.clear();
    assert!(err_of(&g).contains("a gate over zero experts"));
}

#[test]
fn width_mismatch_between_banks() {
    let mut g = mmoe();
    g.nodes.insert(
        1,
        NodeSpec::new("wide", "mlp-experts")
            .input(INPUT)
            .param("count", 2)
            .param("units", [5]),
    );
    g.nodes[2].experts.push("wide".into());
    let e = err_of(&g);
    assert!(e.contains("width mismatch") && e.contains("`wide`"), "{e}");
}

#[test]
fn fusion_width_mismatch() {
    let mut g = mmoe();
    g.nodes.push(NodeSpec::new("m", "mlp").input(INPUT).param("units", [3]));
    g.nodes.push(NodeSpec::new("s", "sum").inputs(["gate-a", "m"]));
    g.nodes[2].inputs = vec!["s".into()];
    let e = err_of(&g);
    assert!(e.contains("graph node `s`") && e.contains("width mismatch"), "{e}");
}

#[test]
fn task_without_tower_and_tower_for_unknown_task() {
    let mut g = mmoe();
    g.nodes.retain(|n| n.id != "tower-b" && n.id != "gate-b");
    let e = err_of(&g);
    assert!(e.contains("task `b` has no tower"), "{e}");
    let mut g = mmoe();
    g.nodes[4].task = Some("c".into());
    let e = err_of(&g);
    assert!(e.contains("tower for unknown task `c`"), "{e}");
}

#[test]
fn duplicate_id_and_reserved_id() {
    let mut g = mmoe();
    g.nodes[3].id = "gate-a".into();
    assert!(err_of(&g).contains("duplicate node id"));
    let mut g = mmoe();
    g.nodes[0].id = INPUT.into();
    assert!(err_of(&g).contains("reserved"));
}

#[test]
fn bad_params_named() {
    let mut g = mmoe();
    g.nodes[0].params.insert("cout".into(), toml::Value::Integer(3));
    let e = err_of(&g);
    assert!(
        e.contains("graph node `experts`") && e.contains("unknown field `cout`"),
        "{e}"
    );
    let mut g = mmoe();
    g.nodes[0]
        .params
        .insert("count".into(), toml::Value::String("three".into()));
    let e = err_of(&g);
    assert!(e.contains("graph node `experts`") && e.contains("invalid type"), "{e}");
}

#[test]
fn bank_read_as_dense_and_unused_node() {
    let mut g = mmoe();
    g.nodes[2].inputs = vec!["experts".into()];
    assert!(err_of(&g).contains("can only be mixed by a gate"));
    let mut g = mmoe();
    g.nodes
        .push(NodeSpec::new("dangling", "mlp").input(INPUT).param("units", [2]));
    assert!(err_of(&g).contains("feeds no tower"));
}

#[test]
fn graph_round_trips_through_toml() {
    let g = mmoe();
    let text = g.to_toml().unwrap();
    assert_eq!(GraphSpec::from_toml(&text).unwrap(), g);
}

fn inputs(rows: usize) -> Inputs {
    let x: Vec<f32> = (0..rows * 6).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
    Inputs::new(None, Some(Tensor::from_vec(x, (rows, 6), &Device::Cpu).unwrap()), None).unwrap()
}

fn features() -> FeatureSpec {
    FeatureSpec::dense_only((0..6).map(|i| format!("x{i}")).collect())
}

#[test]
fn gate_weights_are_a_distribution_per_row() {
    let m = Model::build(&mmoe(), &features(), &tasks(), 0, 3, &Device::Cpu).unwrap();
    let out = m.forward(&inputs(7), false).unwrap();
    assert_eq!(out.outputs.len(), 2);
    assert_eq!(out.outputs[0].dims(), [7]);
    assert_eq!(out.gates.len(), 2);
    for g in &out.gates {
        assert_eq!(g.experts, ["experts#0", "experts#1", "experts#2"]);
        let w: Vec<Vec<f32>> = g.weights.to_vec2().unwrap();
        for row in w {
            assert!(row.iter().all(|&v| v >= 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn expert_bank_equals_each_expert_alone_and_mixing_is_the_weighted_sum() {
    // Hand check of MMoE's f^k(x) = sum_i g_k(x)_i f_i(x) on the built model.
    let m = Model::build(&mmoe(), &features(), &tasks(), 0, 5, &Device::Cpu).unwrap();
    let x = inputs(4);
    let xt = x.dense.clone().unwrap();
    let p = m.params().tensors();
    let w = &p["experts.0.weight"]; // [3, 6, 4]
    let b = &p["experts.0.bias"]; // [3, 1, 4]
    let gate_w = &p["gate-a.weight"]; // [6, 3]
    let logits: Vec<Vec<f32>> = xt.matmul(gate_w).unwrap().to_vec2().unwrap();
    let xs: Vec<Vec<f32>> = xt.to_vec2().unwrap();
    // Expected mix for gate a, by hand.
    let mut expected = vec![vec![0f32; 4]; 4];
    for (r, row) in xs.iter().enumerate() {
        let mx = logits[r].iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = logits[r].iter().map(|l| (l - mx).exp()).collect();
        let z: f32 = e.iter().sum();
        for (i, ei) in e.iter().enumerate() {
            let wi: Vec<Vec<f32>> = w.get(i).unwrap().to_vec2().unwrap();
            let bi: Vec<f32> = b.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for j in 0..4 {
                let mut h = bi[j];
                for (k, xv) in row.iter().enumerate() {
                    h += xv * wi[k][j];
                }
                expected[r][j] += ei / z * h.max(0.0);
            }
        }
    }
    // The tower of task a reads the mix: recompute the tower on `expected`.
    let hidden_w = &p["tower-a.hidden.0.weight"];
    let hidden_b = &p["tower-a.hidden.0.bias"];
    let out_w = &p["tower-a.out.weight"];
    let out_b = &p["tower-a.out.bias"];
    let mix = Tensor::new(expected, &Device::Cpu).unwrap();
    let h = mix
        .matmul(hidden_w)
        .unwrap()
        .broadcast_add(hidden_b)
        .unwrap()
        .relu()
        .unwrap();
    let want: Vec<f32> = h
        .matmul(out_w)
        .unwrap()
        .broadcast_add(out_b)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let got: Vec<f32> = m.forward(&x, false).unwrap().outputs[0].to_vec1().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn same_seed_same_model_and_batch_of_one() {
    let a = Model::build(&mmoe(), &features(), &tasks(), 0, 9, &Device::Cpu).unwrap();
    let b = Model::build(&mmoe(), &features(), &tasks(), 0, 9, &Device::Cpu).unwrap();
    let x = inputs(1);
    let ya: Vec<f32> = a.forward(&x, false).unwrap().outputs[1].to_vec1().unwrap();
    let yb: Vec<f32> = b.forward(&x, false).unwrap().outputs[1].to_vec1().unwrap();
    assert_eq!(ya, yb);
    assert_eq!(ya.len(), 1);
}

#[test]
fn sparse_features_embed_per_field() {
    use mtrec_core::SparseFeature;
    let feats = FeatureSpec {
        sparse: vec![
            SparseFeature {
                name: "u".into(),
                vocab: 3,
                dim: 2,
            },
            SparseFeature {
                name: "i".into(),
                vocab: 5,
                dim: 3,
            },
            SparseFeature {
                name: "c".into(),
                vocab: 4,
                dim: 2,
            },
        ],
        dense: vec!["d".into()],
        ..FeatureSpec::default()
    };
    let env = GraphEnv {
        input_width: feats.width(),
        tasks: tasks(),
        domains: 0,
        features: feats.clone(),
    };
    assert_eq!(env.input_width, 8);
    let m = Model::build(&mmoe(), &feats, &tasks(), 0, 1, &Device::Cpu).unwrap();
    let p = m.params().tensors();
    // Fields of width 2 share one table of 3 + 4 rows; width 3 has its own.
    assert_eq!(p["features.embedding.dim2"].dims(), [7, 2]);
    assert_eq!(p["features.embedding.dim3"].dims(), [5, 3]);
    let ids = Tensor::new(&[[2u32, 4, 3], [0, 0, 0]], &Device::Cpu).unwrap();
    let dense = Tensor::new(&[[1f32], [2.0]], &Device::Cpu).unwrap();
    let inp = Inputs::new(Some(ids), Some(dense), None).unwrap();
    assert_eq!(m.forward(&inp, false).unwrap().outputs[0].dims(), [2]);
}

/// MMoE's structure: the experts reach both towers (shared); each gate and
/// tower reaches one task (not shared).
#[test]
fn shared_variables_follow_the_graph() {
    let m = Model::build(&mmoe(), &features(), &tasks(), 0, 3, &Device::Cpu).unwrap();
    let reach = m.nodes_reaching_tasks();
    assert_eq!(
        reach[0].iter().copied().collect::<Vec<_>>(),
        ["experts", "gate-a", "tower-a"]
    );
    assert_eq!(
        reach[1].iter().copied().collect::<Vec<_>>(),
        ["experts", "gate-b", "tower-b"]
    );
    let shared: Vec<String> = m.shared_vars().into_iter().map(|(n, _)| n).collect();
    assert!(!shared.is_empty());
    assert!(shared.iter().all(|n| n.starts_with("experts.")), "{shared:?}");
    let experts = m
        .params()
        .vars()
        .into_iter()
        .filter(|(n, _)| n.starts_with("experts."))
        .count();
    assert_eq!(shared.len(), experts);
}

/// A test kind whose node exists for its objective term: the batch mean of
/// each row's sum of its inputs' columns, added as a penalty; its output is
/// that `[B, 1]` row sum.
struct MeanPenaltyKind;

struct MeanPenalty;

impl mtrec_core::Fusion for MeanPenalty {
    fn forward(&self, xs: &[Tensor], ctx: &mtrec_core::ForwardCtx) -> mtrec_core::Result<Tensor> {
        let mut sum = xs[0].sum_keepdim(1)?;
        for x in &xs[1..] {
            sum = (sum + x.sum_keepdim(1)?)?;
        }
        ctx.add_penalty("mean-penalty", sum.mean_all()?)?;
        Ok(sum)
    }
}

impl mtrec_core::Kind for MeanPenaltyKind {
    type Params = mtrec_core::components::fusion::NoParams;
    fn name(&self) -> &'static str {
        "test-mean-penalty"
    }
    fn role(&self) -> mtrec_core::Role {
        mtrec_core::Role::Fusion
    }
    fn summary(&self) -> &'static str {
        "test: the batch mean of each row's sum of its inputs, as a penalty"
    }
    fn check(
        &self,
        _p: &Self::Params,
        _io: &mtrec_core::NodeIo,
        _env: &GraphEnv,
    ) -> std::result::Result<mtrec_core::Port, String> {
        Ok(mtrec_core::Port::Dense { width: 1 })
    }
    fn build(
        &self,
        _p: &Self::Params,
        _io: &mtrec_core::NodeIo,
        _env: &GraphEnv,
        _pb: &mtrec_core::ParamBuilder,
    ) -> mtrec_core::Result<mtrec_core::Component> {
        Ok(mtrec_core::Component::Fusion(Box::new(MeanPenalty)))
    }
    fn objective_term(&self) -> bool {
        true
    }
}

mtrec_core::register_kind!(MeanPenaltyKind);

/// A node of an objective-term kind may feed no tower, and what it reads
/// counts as used (here a `concat` of the two towers that feeds nothing
/// else); it runs in every pass, its penalty is collected in training only,
/// and reading both towers makes neither tower shared. A plain node that
/// feeds nothing is still an error.
#[test]
fn an_objective_term_node_may_end_a_path() {
    let mut g = mmoe();
    g.nodes
        .push(NodeSpec::new("both", "concat").inputs(["tower-a", "tower-b"]));
    g.nodes
        .push(NodeSpec::new("penalty", "test-mean-penalty").input("both"));
    validate(&g, &env()).unwrap();
    let m = Model::build(&g, &features(), &tasks(), 0, 3, &Device::Cpu).unwrap();
    let train = m.forward(&inputs(4), true).unwrap();
    assert_eq!(train.penalties.len(), 1);
    assert_eq!(train.penalties[0].name, "mean-penalty");
    // The penalty is the mean over rows of tower-a's plus tower-b's output.
    let want = f64::from(
        ((&train.outputs[0] + &train.outputs[1]).unwrap().mean_all().unwrap())
            .to_scalar::<f32>()
            .unwrap(),
    );
    let got = f64::from(train.penalties[0].value.to_scalar::<f32>().unwrap());
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!(m.forward(&inputs(4), false).unwrap().penalties.is_empty());
    let shared: Vec<String> = m.shared_vars().into_iter().map(|(n, _)| n).collect();
    assert!(shared.iter().all(|n| n.starts_with("experts.")), "{shared:?}");

    g.nodes
        .push(NodeSpec::new("dangling", "mlp").input("both").param("units", [2]));
    assert!(err_of(&g).contains("feeds no tower (nor an objective term)"));
}
