//! SAR-Net's components against values computed by hand in the test: the
//! behaviour attention, the scenario transform, the scenario-expert routing,
//! the debias experts with their Fairness Coefficient and the scenario gate. Small widths, 3 rows, 2 scenarios, every weight set
//! to a known value; the expected outputs are written out here (f64), not
//! taken from the code under test.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use mtrec_core::features::{FeatureInput, SequenceFeature, SparseFeature};
use mtrec_core::{
    Component, Domains, FeatureSpec, ForwardCtx, GraphEnv, Inputs, Kind, NodeIo, ParamBuilder, ParamStore, Port,
    SequenceInput,
};
use mtrec_sar_net::{
    BehaviourKind, BehaviourParams, DebiasExpertsKind, DebiasExpertsParams, ScenarioGateKind, ScenarioGateParams,
    ScenarioTransformKind, ScenarioTransformParams,
};

const TOL: f64 = 1e-5;

fn dev() -> Device {
    Device::Cpu
}

fn env(features: FeatureSpec) -> GraphEnv {
    GraphEnv {
        input_width: features.width(),
        tasks: vec![],
        domains: 2,
        features,
    }
}

fn dense_io(width: usize) -> NodeIo {
    NodeIo {
        inputs: vec![Port::Dense { width }],
        experts: vec![],
    }
}

/// Sets variable or table `name` of `store` to `values` (row-major).
fn set(store: &ParamStore, name: &str, values: &[f32]) {
    let (_, v) = store
        .all()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no `{name}` among {:?}", names(store)));
    assert_eq!(v.elem_count(), values.len(), "`{name}` has shape {:?}", v.dims());
    v.set(&Tensor::from_vec(values.to_vec(), v.dims(), &dev()).unwrap())
        .unwrap();
}

fn names(store: &ParamStore) -> Vec<String> {
    store.all().into_iter().map(|(n, _)| n).collect()
}

fn rows(x: &[[f32; 3]]) -> Tensor {
    Tensor::from_vec(x.as_flattened().to_vec(), (x.len(), 3), &dev()).unwrap()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= TOL * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w} by hand ({got:?} vs {want:?})"
        );
    }
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v [n] @ m [n, k]` with `m` row-major.
fn vecmat(v: &[f64], m: &[f32], k: usize) -> Vec<f64> {
    (0..k)
        .map(|o| v.iter().enumerate().map(|(i, x)| x * f64::from(m[i * k + o])).sum())
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `x' = x * w_s + b_s` with the row's scenario's `w_s`, `b_s`, rows in
/// scenario order 1, 0, 1.
#[test]
fn scenario_transform_by_hand() {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let Component::Layer(layer) = ScenarioTransformKind
        .build(
            &ScenarioTransformParams {},
            &dense_io(3),
            &env(FeatureSpec::default()),
            &pb.pp("t"),
        )
        .unwrap()
    else {
        panic!("not a layer")
    };
    let scale = [1.5f32, -2.0, 0.5, 3.0, 0.25, -1.0];
    let shift = [0.1f32, 0.2, 0.3, -1.0, 2.0, 0.5];
    set(&store, "t.scale", &scale);
    set(&store, "t.shift", &shift);
    let x = [[1.0f32, 2.0, -3.0], [4.0, -0.5, 0.0], [-2.0, 1.0, 8.0]];
    let doms = Domains::new(vec![1, 0, 1], 2, &dev()).unwrap();
    let y = layer
        .forward(&rows(&x), &ForwardCtx::eval().with_domains(Some(&doms)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Row 0, scenario 1: (1 * 3 - 1, 2 * 0.25 + 2, -3 * -1 + 0.5).
    assert_close(&y[0], &[2.0, 2.5, 3.5], "row 0");
    // Row 1, scenario 0: (4 * 1.5 + 0.1, -0.5 * -2 + 0.2, 0 * 0.5 + 0.3).
    assert_close(&y[1], &[6.1, 1.2, 0.3], "row 1");
    // Row 2, scenario 1: (-2 * 3 - 1, 1 * 0.25 + 2, 8 * -1 + 0.5).
    assert_close(&y[2], &[-7.0, 2.25, -7.5], "row 2");
}

/// Scenario-specific experts: bank slot `k` of a row is expert `k` of the
/// row's scenario, `relu(x W_{s,k} + b_{s,k})`, rows in scenario order
/// 1, 0, 1 (grouped and put back).
#[test]
fn scenario_expert_routing_by_hand() {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let p = DebiasExpertsParams {
        count: 2,
        units: vec![2],
        scenario_specific: true,
        ..Default::default()
    };
    let Component::Expert(bank) = DebiasExpertsKind
        .build(&p, &dense_io(3), &env(FeatureSpec::default()), &pb.pp("e"))
        .unwrap()
    else {
        panic!("not an expert bank")
    };
    // W [count = 2, in = 3, out = 2] and b [2, 1, 2] of each scenario: every
    // value distinct, so that a swapped expert or scenario shows.
    let w: Vec<Vec<f32>> = (0..2)
        .map(|s| {
            (0..12)
                .map(|i| 0.1 * (i as f32 + 1.0) * if s == 0 { 1.0 } else { -0.7 } + s as f32)
                .collect()
        })
        .collect();
    let b: Vec<Vec<f32>> = vec![vec![0.5, -0.25, 1.0, 0.0], vec![-0.5, 2.0, 0.75, -3.0]];
    for s in 0..2 {
        set(&store, &format!("e.scenario{s}.main.0.weight"), &w[s]);
        set(&store, &format!("e.scenario{s}.main.0.bias"), &b[s]);
    }
    let x = [[1.0f32, 2.0, -3.0], [4.0, -0.5, 0.0], [-2.0, 1.0, 0.5]];
    let ids = [1usize, 0, 1];
    let doms = Domains::new(ids.iter().map(|&s| s as u32).collect(), 2, &dev()).unwrap();
    let out = bank
        .forward(&rows(&x), &ForwardCtx::eval().with_domains(Some(&doms)))
        .unwrap();
    assert_eq!(out.dims(), &[2, 3, 2]);
    let out = out.to_vec3::<f32>().unwrap();
    let mut positive = 0;
    for (r, xr) in x.iter().enumerate() {
        let s = ids[r];
        for k in 0..2 {
            let want: Vec<f64> = (0..2)
                .map(|o| {
                    let z: f64 = (0..3)
                        .map(|i| f64::from(xr[i]) * f64::from(w[s][k * 6 + i * 2 + o]))
                        .sum::<f64>()
                        + f64::from(b[s][k * 2 + o]);
                    z.max(0.0)
                })
                .collect();
            positive += want.iter().filter(|&&v| v > 0.0).count();
            assert_close(&out[k][r], &want, &format!("row {r} (scenario {s}) slot {k}"));
        }
    }
    // Not vacuous: most outputs are past the ReLU's zero.
    assert!(positive >= 6, "{positive} positive outputs: {out:?}");
    // And the two scenarios' experts differ on the same row: row 1 routed
    // to scenario 1 would give other values.
    let other: f64 = (0..3).map(|i| f64::from(x[1][i]) * f64::from(w[1][i * 2])).sum::<f64>() + f64::from(b[1][0]);
    assert!((other.max(0.0) - f64::from(out[0][1][0])).abs() > 0.1);
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The debias experts' training output
/// `e_k = relu(x W_k + b_k) + FC(z) * (z V_k + c_k)`,
/// `FC(z) = sigmoid(z u + a)` (one scalar per row), with one dense debias
/// feature `z`; evaluation gives `relu(x W_k + b_k)` only, and without FC
/// (`fairness_coefficient = false`) training gives `main + bias`. For the
/// scenario-specific bank the main and bias networks are the row's
/// scenario's and the FC network the bank's one, rows in scenario order
/// 1, 0, 1 (a row's FC applied to another row would show).
#[test]
fn debias_experts_with_fairness_coefficient_by_hand() {
    // `other` only because the input layer needs one input feature.
    let spec = FeatureSpec {
        dense: vec!["other".into(), "pos".into()],
        side: vec!["pos".into()],
        ..FeatureSpec::default()
    };
    let x = [[1.0f32, 2.0, -3.0], [4.0, -0.5, 0.0], [-2.0, 1.0, 0.5]];
    let z = [0.5f32, -1.5, 2.0];
    let ids = [1usize, 0, 1];
    // Per scenario (one set only for the shared bank): main W [2, 3, 2],
    // b [2, 1, 2]; bias V [2, 1, 2], c [2, 1, 2]. FC u [1, 1, 1], a [1, 1, 1].
    let w: [[f32; 12]; 2] = [
        [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 0.15, 0.25, -0.35],
        [-0.3, 0.2, 0.5, -0.1, 0.4, 0.9, -0.6, 0.35, 0.05, -0.45, 0.65, 0.2],
    ];
    let b: [[f32; 4]; 2] = [[0.5, 1.0, -0.25, 2.0], [0.0, 0.75, 1.5, -0.5]];
    let v: [[f32; 4]; 2] = [[2.0, -1.0, 0.5, 3.0], [-1.5, 0.25, 1.0, -2.0]];
    let c: [[f32; 4]; 2] = [[0.3, -0.4, 1.2, 0.0], [0.6, 0.1, -0.8, 0.9]];
    let (u, a) = (1.7f32, -0.4f32);
    for specific in [false, true] {
        for with_fc in [true, false] {
            let store = ParamStore::new();
            let pb = ParamBuilder::new(&store, 1, &dev());
            let input = FeatureInput::new(&spec, &pb.pp("features")).unwrap();
            let p = DebiasExpertsParams {
                count: 2,
                units: vec![2],
                scenario_specific: specific,
                debias: vec!["pos".into()],
                fairness_coefficient: with_fc,
                ..Default::default()
            };
            let Component::Expert(bank) = DebiasExpertsKind
                .build(&p, &dense_io(3), &env(spec.clone()), &pb.pp("e"))
                .unwrap()
            else {
                panic!("not an expert bank")
            };
            let sets: Vec<(usize, String)> = if specific {
                (0..2).map(|s| (s, format!("e.scenario{s}."))).collect()
            } else {
                vec![(0, "e.".into())]
            };
            for (s, prefix) in &sets {
                set(&store, &format!("{prefix}main.0.weight"), &w[*s]);
                set(&store, &format!("{prefix}main.0.bias"), &b[*s]);
                set(&store, &format!("{prefix}bias.0.weight"), &v[*s]);
                set(&store, &format!("{prefix}bias.0.bias"), &c[*s]);
            }
            if with_fc {
                set(&store, "e.fc.0.weight", &[u]);
                set(&store, "e.fc.0.bias", &[a]);
            } else {
                assert!(!names(&store).iter().any(|n| n.contains("fc")), "{:?}", names(&store));
            }
            let inputs = Inputs::new(
                None,
                Some(Tensor::from_vec(z.iter().flat_map(|&zr| [9.0, zr]).collect(), (3, 2), &dev()).unwrap()),
                Some(Domains::new(ids.iter().map(|&s| s as u32).collect(), 2, &dev()).unwrap()),
            )
            .unwrap();
            let (_, views) = input.forward_with_views(&inputs, true).unwrap();
            let run = |ctx: ForwardCtx| {
                let ctx = ctx.with_domains(inputs.domains.as_ref()).with_features(Some(&views));
                let out = bank.forward(&rows(&x), &ctx).unwrap();
                assert_eq!(out.dims(), &[2, 3, 2]);
                out.to_vec3::<f32>().unwrap()
            };
            let (train, eval) = (run(ForwardCtx::train()), run(ForwardCtx::eval()));
            for (r, xr) in x.iter().enumerate() {
                let s = if specific { ids[r] } else { 0 };
                let zr = f64::from(z[r]);
                let fc = if with_fc {
                    sigmoid(f64::from(u) * zr + f64::from(a))
                } else {
                    1.0
                };
                for k in 0..2 {
                    let main: Vec<f64> = (0..2)
                        .map(|o| {
                            let h: f64 = (0..3)
                                .map(|i| f64::from(xr[i]) * f64::from(w[s][k * 6 + i * 2 + o]))
                                .sum::<f64>()
                                + f64::from(b[s][k * 2 + o]);
                            h.max(0.0)
                        })
                        .collect();
                    let with_bias: Vec<f64> = (0..2)
                        .map(|o| main[o] + fc * (zr * f64::from(v[s][k * 2 + o]) + f64::from(c[s][k * 2 + o])))
                        .collect();
                    let what = format!("specific {specific}, FC {with_fc}, row {r} slot {k}");
                    assert_close(&train[k][r], &with_bias, &format!("train, {what}"));
                    assert_close(&eval[k][r], &main, &format!("eval, {what}"));
                }
            }
        }
    }
    // Not vacuous: the three rows' coefficients are far apart.
    let fcs: Vec<f64> = z.iter().map(|&zr| sigmoid(f64::from(u * zr + a))).collect();
    assert!(fcs.windows(2).all(|p| (p[0] - p[1]).abs() > 0.3), "{fcs:?}");
}

/// The gate: `softmax([x; e_s] W + b)` over the shared bank's 2 experts and
/// the row's scenario's 1, `e_s` the gate's embedding of the row's scenario.
#[test]
fn scenario_gate_by_hand() {
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let io = NodeIo {
        inputs: vec![Port::Dense { width: 3 }],
        experts: vec![Port::Bank { count: 2, width: 4 }, Port::Bank { count: 1, width: 4 }],
    };
    let p = ScenarioGateParams {
        embedding_dim: 2,
        bias: true,
    };
    let Component::Gate(gate) = ScenarioGateKind
        .build(&p, &io, &env(FeatureSpec::default()), &pb.pp("g"))
        .unwrap()
    else {
        panic!("not a gate")
    };
    let emb = [0.5f32, -1.0, 2.0, 0.25];
    // [in = 3 + 2, out = 3], row-major.
    let wt = [
        0.2f32, -0.1, 0.4, //
        -0.3, 0.5, 0.1, //
        0.05, 0.0, -0.2, //
        1.0, -1.0, 0.5, //
        -0.5, 0.8, 0.3,
    ];
    let bias = [0.1f32, -0.2, 0.05];
    set(&store, "g.scenario_embedding", &emb);
    set(&store, "g.weight", &wt);
    set(&store, "g.bias", &bias);
    let x = [[1.0f32, 2.0, -3.0], [4.0, -0.5, 0.0], [-2.0, 1.0, 0.5]];
    let ids = [1usize, 0, 1];
    let doms = Domains::new(ids.iter().map(|&s| s as u32).collect(), 2, &dev()).unwrap();
    let g = gate
        .weights(&rows(&x), &ForwardCtx::eval().with_domains(Some(&doms)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (r, xr) in x.iter().enumerate() {
        let s = ids[r];
        let z: Vec<f64> = f64s(xr).into_iter().chain(f64s(&emb[s * 2..s * 2 + 2])).collect();
        let logits: Vec<f64> = vecmat(&z, &wt, 3)
            .iter()
            .zip(&bias)
            .map(|(l, b)| l + f64::from(*b))
            .collect();
        assert_close(&g[r], &softmax(&logits), &format!("row {r} (scenario {s})"));
    }
    // Conditioned on the scenario: the same input in the other scenario
    // gets other weights.
    let swapped = Domains::new(vec![0, 1, 0], 2, &dev()).unwrap();
    let h = gate
        .weights(&rows(&x), &ForwardCtx::eval().with_domains(Some(&swapped)))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!((h[0][0] - g[0][0]).abs() > 1e-2, "{h:?} vs {g:?}");
}

/// The behaviour attention: weights `softmax_j(s1_j + s2_j)` over the real
/// positions, `s1_j = (e_target W_i) . e_item_j / sqrt(3)`,
/// `s2_j = (c_s W_s) . e_scen_j / sqrt(2)`, `c_s` the node's own embedding of
/// the row's scenario; the interest `sum_j a_j e_item_j` appended to the
/// input. The padding's item embedding has a coordinate no real item has, so
/// any weight on it would show; a row without behaviours gets zeros.
#[test]
fn behaviour_attention_by_hand() {
    let spec = FeatureSpec {
        sparse: vec![SparseFeature {
            name: "item_id".into(),
            vocab: 5,
            dim: 3,
        }],
        sequences: vec![
            SequenceFeature {
                name: "hist_item_id".into(),
                max_len: 3,
                vocab: 5,
                dim: 3,
                pooling: Default::default(),
                share_with: Some("item_id".into()),
            },
            SequenceFeature {
                name: "hist_domain".into(),
                max_len: 3,
                vocab: 3,
                dim: 2,
                pooling: Default::default(),
                share_with: None,
            },
        ],
        side: vec!["hist_item_id".into(), "hist_domain".into()],
        ..FeatureSpec::default()
    };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let input = FeatureInput::new(&spec, &pb.pp("features")).unwrap();
    let p = BehaviourParams {
        scenario_dim: 2,
        ..BehaviourParams::default()
    };
    let e = env(spec.clone());
    let Component::Layer(layer) = BehaviourKind.build(&p, &dense_io(3), &e, &pb.pp("b")).unwrap() else {
        panic!("not a layer")
    };

    // Item table (shared by the target and the behaviours): id 0 is padding.
    let items: [[f32; 3]; 5] = [
        [50.0, -50.0, 1000.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.5, -1.0, 2.0],
    ];
    let scen: [[f32; 2]; 3] = [[7.0, 7.0], [1.0, -1.0], [0.5, 2.0]];
    let item_query = [0.3f32, -1.2, 0.8, 1.1, 0.4, -0.6, -0.9, 0.7, 1.5];
    let scenario_query = [1.2f32, -0.4, 0.3, 0.9];
    let current = [[1.0f32, 0.0], [-0.5, 1.5]];
    set(&store, "features.embedding.dim3", items.as_flattened());
    set(&store, "features.sequence.hist_domain", scen.as_flattened());
    set(&store, "b.item_query", &item_query);
    set(&store, "b.scenario_query", &scenario_query);
    set(&store, "b.scenario_embedding", current.as_flattened());

    // Row 0: scenario 0, target 4, behaviours (1, s1) (2, s2) (3, s1).
    // Row 1: scenario 1, target 1, behaviours (2, s2) (1, s2), one padded.
    // Row 2: scenario 1, target 2, no behaviour.
    let target = [4u32, 1, 2];
    let hist_items = [[1u32, 2, 3], [2, 1, 0], [0, 0, 0]];
    let hist_scen = [[1u32, 2, 1], [2, 2, 0], [0, 0, 0]];
    let lengths = [3u32, 2, 0];
    let doms = [0u32, 1, 1];
    let seq = |ids: &[[u32; 3]; 3]| SequenceInput::new(Tensor::new(ids, &dev()).unwrap(), lengths.to_vec()).unwrap();
    let inputs = Inputs::new(
        Some(Tensor::from_vec(target.to_vec(), (3, 1), &dev()).unwrap()),
        None,
        Some(Domains::new(doms.to_vec(), 2, &dev()).unwrap()),
    )
    .unwrap()
    .with_sequences(vec![seq(&hist_items), seq(&hist_scen)])
    .unwrap();
    let (x, views) = input.forward_with_views(&inputs, false).unwrap();
    let ctx = ForwardCtx::eval()
        .with_domains(inputs.domains.as_ref())
        .with_features(Some(&views));
    let y = layer.forward(&x, &ctx).unwrap().to_vec2::<f32>().unwrap();

    for r in 0..3 {
        assert_eq!(y[r].len(), 6);
        // The input (the target's embedding) first, unchanged.
        assert_close(&y[r][..3], &f64s(&items[target[r] as usize]), &format!("row {r} input"));
        let n = lengths[r] as usize;
        let q1 = vecmat(&f64s(&items[target[r] as usize]), &item_query, 3);
        let q2 = vecmat(&f64s(&current[doms[r] as usize]), &scenario_query, 2);
        let s: Vec<f64> = (0..n)
            .map(|j| {
                dot(&q1, &f64s(&items[hist_items[r][j] as usize])) / 3f64.sqrt()
                    + dot(&q2, &f64s(&scen[hist_scen[r][j] as usize])) / 2f64.sqrt()
            })
            .collect();
        let a = if n == 0 { vec![] } else { softmax(&s) };
        let mut interest = [0.0f64; 3];
        for (j, aj) in a.iter().enumerate() {
            for (c, v) in interest.iter_mut().enumerate() {
                *v += aj * f64::from(items[hist_items[r][j] as usize][c]);
            }
        }
        assert_close(&y[r][3..], &interest, &format!("row {r} interest"));
    }
    // Masked positions weigh exactly 0: row 1's third coordinate is only
    // the padding's (1000), row 2 has no behaviour at all.
    assert_eq!(y[1][5], 0.0, "{:?}", y[1]);
    assert_eq!(&y[2][3..], &[0.0, 0.0, 0.0]);
    // Not vacuous: the scenario attention matters. Row 0's behaviours 1 and
    // 3 have the same scenario and unit items, so their weight ratio is
    // exp((q1_0 - q1_2) / sqrt 3); behaviour 2's differs by the scenario term.
    let q1 = vecmat(&f64s(&items[4]), &item_query, 3);
    let item_only = softmax(&[q1[0] / 3f64.sqrt(), q1[1] / 3f64.sqrt(), q1[2] / 3f64.sqrt()]);
    assert!(
        (f64::from(y[0][4]) - item_only[1]).abs() > 1e-2,
        "{:?} vs {item_only:?}",
        y[0]
    );
}
