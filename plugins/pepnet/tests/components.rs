//! PEPNet's components against values computed in f64 by the test itself
//! (every weight set to a known value, small widths): the Gate NU inside
//! `epnet`, the split of the `ppnet-gates` factors over layers and tasks,
//! the `ppnet-tower` equations, and the stopped gradients.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};
use mtrec_core::features::FeatureInput;
use mtrec_core::{
    Component, Domains, FeatureSpec, ForwardCtx, GraphEnv, Inputs, Kind, NodeIo, ParamBuilder, ParamStore, Port,
};
use mtrec_pepnet::{
    EpnetKind, EpnetParams, Layout, PpnetGatesKind, PpnetGatesParams, PpnetTowerKind, PpnetTowerParams,
};

const TOL: f64 = 1e-5;

fn dev() -> Device {
    Device::Cpu
}

fn env(features: FeatureSpec, domains: usize) -> GraphEnv {
    GraphEnv {
        input_width: features.width(),
        tasks: vec![],
        domains,
        features,
    }
}

fn dense_io(width: usize) -> NodeIo {
    NodeIo {
        inputs: vec![Port::Dense { width }],
        experts: vec![],
    }
}

/// Distinct values in about [-1, 1], different for each `seed`.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 11 + 5) % 17) as f32 / 8.0 - 1.0)
        .collect()
}

/// Sets variable `name` of `store` to distinct known values, returned.
fn set(store: &ParamStore, name: &str, seed: usize) -> Vec<f32> {
    let (_, v) = store.all().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| {
        panic!(
            "no `{name}` among {:?}",
            store.all().into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        )
    });
    let vals = values(v.elem_count(), seed);
    v.set(&Tensor::from_vec(vals.clone(), v.dims(), &dev()).unwrap())
        .unwrap();
    vals
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= TOL * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w} computed here ({got:?} vs {want:?})"
        );
    }
}

/// `v [n] @ m [n, k] + b [k]`, `m` row-major.
fn affine(v: &[f64], m: &[f32], b: &[f32]) -> Vec<f64> {
    let k = b.len();
    assert_eq!(m.len(), v.len() * k);
    (0..k)
        .map(|o| {
            v.iter()
                .enumerate()
                .map(|(i, x)| x * f64::from(m[i * k + o]))
                .sum::<f64>()
                + f64::from(b[o])
        })
        .collect()
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

/// The Gate NU: `2 * sigmoid(relu(z Wh + bh) Wo + bo)`.
fn gate_nu(z: &[f64], w: &[Vec<f32>; 4]) -> Vec<f64> {
    let h = relu(affine(z, &w[0], &w[1]));
    affine(&h, &w[2], &w[3])
        .into_iter()
        .map(|s| 2.0 / (1.0 + (-s).exp()))
        .collect()
}

fn mul(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x * y).collect()
}

/// Sets the four weights of the Gate NU under `prefix`.
fn set_gate(store: &ParamStore, prefix: &str, seed: usize) -> [Vec<f32>; 4] {
    ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
        .map(|n| set(store, &format!("{prefix}.{n}"), seed + n.len()))
}

#[test]
fn layout_offsets_written_out() {
    // W = 3, towers [4, 2], 2 tasks: widths 3, 4, 2; 3 + 2 x 9 columns.
    let l = Layout::new(3, &[4, 2], 2);
    assert_eq!(l.width(), 21);
    assert_eq!(l.factors(0, 0), (3, 3));
    assert_eq!(l.factors(0, 1), (6, 3));
    assert_eq!(l.factors(1, 0), (9, 4));
    assert_eq!(l.factors(1, 1), (13, 4));
    assert_eq!(l.factors(2, 0), (17, 2));
    assert_eq!(l.factors(2, 1), (19, 2));
    assert_eq!(Layout::from_output(21, &[4, 2], 2).unwrap(), l);
    assert!(Layout::from_output(22, &[4, 2], 2).is_err());
    assert!(Layout::from_output(12, &[4, 2], 2).is_err());
}

/// `O_ep = x * 2 sigmoid(relu([e_d; stat; x] Wh + bh) Wo + bo)` for 3 rows
/// of 2 domains, with a dense domain feature `stat`; the gradient of
/// `sum(O_ep)` with respect to `x` is exactly the factors (`x` enters the
/// gate with its gradient stopped).
#[test]
fn epnet_by_hand_with_the_gradient_to_its_input_stopped() {
    let spec = FeatureSpec {
        // The input layer needs one feature in the input; `stat` is a side feature.
        dense: vec!["other".into(), "stat".into()],
        side: vec!["stat".into()],
        ..FeatureSpec::default()
    };
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let input = FeatureInput::new(&spec, &pb.pp("features")).unwrap();
    let p = EpnetParams {
        domain_features: vec!["stat".into()],
        domain_dim: 1,
        gate_hidden: 2,
        gamma: 2.0,
    };
    let Component::Layer(layer) = EpnetKind.build(&p, &dense_io(3), &env(spec, 2), &pb.pp("ep")).unwrap() else {
        panic!("not a layer")
    };
    let table = set(&store, "ep.domain_embedding", 1);
    let w = set_gate(&store, "ep.gate", 2);
    let stat = [0.5f32, -2.0, 1.5];
    let doms = [1u32, 0, 1];
    let x = [[1.0f32, -0.5, 2.0], [0.25, 3.0, -1.0], [-2.0, 0.75, 0.5]];
    let inputs = Inputs::new(
        None,
        Some(Tensor::from_vec(stat.iter().flat_map(|&s| [9.0, s]).collect(), (3, 2), &dev()).unwrap()),
        Some(Domains::new(doms.to_vec(), 2, &dev()).unwrap()),
    )
    .unwrap();
    let (_, views) = input.forward_with_views(&inputs, true).unwrap();
    let ctx = ForwardCtx::train()
        .with_domains(inputs.domains.as_ref())
        .with_features(Some(&views));
    let xv = Var::from_tensor(&Tensor::from_vec(x.as_flattened().to_vec(), (3, 3), &dev()).unwrap()).unwrap();
    let y = layer.forward(xv.as_tensor(), &ctx).unwrap();
    let grad = y.sum_all().unwrap().backward().unwrap();
    let gx = grad.get(xv.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    let y = y.to_vec2::<f32>().unwrap();
    let mut off_one = 0.0f64;
    for r in 0..3 {
        let xr: Vec<f64> = x[r].iter().map(|&v| f64::from(v)).collect();
        let mut z = vec![f64::from(table[doms[r] as usize]), f64::from(stat[r])];
        z.extend(&xr);
        let delta = gate_nu(&z, &w);
        off_one += delta.iter().map(|d| (d - 1.0).abs()).sum::<f64>();
        assert_close(&y[r], &mul(&xr, &delta), &format!("row {r} O_ep"));
        assert_close(&gx[r], &delta, &format!("row {r} d sum(O_ep) / d x"));
    }
    // Not vacuous: the factors are far from the identity's 1.
    assert!(off_one > 1.0, "factors too close to 1: {off_one}");
}

/// `ppnet-gates` with 2 tasks and towers [2] over a 2-wide input, the prior
/// a dense feature `p`: its output is `[x | layer 0 factors | layer 1
/// factors]` with each layer's Gate NU over `[p; x]`, and each `ppnet-tower`
/// computes `((relu((x * d0_t) W1 + b1)) * d1_t) Wout + bout` with its own
/// task's halves; the gates pass no gradient to `x` through the gate path.
#[test]
fn ppnet_gates_and_towers_by_hand() {
    let spec = FeatureSpec::dense_only(vec!["p".into()]);
    let store = ParamStore::new();
    let pb = ParamBuilder::new(&store, 1, &dev());
    let input = FeatureInput::new(&spec, &pb.pp("features")).unwrap();
    let e = env(spec, 0);
    let gp = PpnetGatesParams {
        prior: vec!["p".into()],
        units: vec![2],
        tasks: 2,
        gate_hidden: 2,
        gamma: 2.0,
    };
    let port = PpnetGatesKind.check(&gp, &dense_io(2), &e).unwrap();
    assert_eq!(port, Port::Dense { width: 10 });
    let Component::Layer(gates) = PpnetGatesKind.build(&gp, &dense_io(2), &e, &pb.pp("g")).unwrap() else {
        panic!("not a layer")
    };
    let towers: Vec<_> = (0..2)
        .map(|slot| {
            let tp = PpnetTowerParams {
                units: vec![2],
                tasks: 2,
                slot,
                ..Default::default()
            };
            assert_eq!(
                PpnetTowerKind.check(&tp, &dense_io(10), &e).unwrap(),
                Port::Dense { width: 1 }
            );
            match PpnetTowerKind
                .build(&tp, &dense_io(10), &e, &pb.pp(format!("t{slot}")))
                .unwrap()
            {
                Component::Tower(t) => t,
                _ => panic!("not a tower"),
            }
        })
        .collect();
    let g0 = set_gate(&store, "g.layer0", 3);
    let g1 = set_gate(&store, "g.layer1", 4);
    let tw: Vec<[Vec<f32>; 4]> = (0..2)
        .map(|t| {
            ["hidden.0.weight", "hidden.0.bias", "out.weight", "out.bias"]
                .map(|n| set(&store, &format!("t{t}.{n}"), 5 + t + n.len()))
        })
        .collect();
    let prior = [1.0f32, -0.5];
    let x = [[0.5f32, -1.5], [2.0, 0.25]];
    let inputs = Inputs::new(
        None,
        Some(Tensor::from_vec(prior.to_vec(), (2, 1), &dev()).unwrap()),
        None,
    )
    .unwrap();
    let (_, views) = input.forward_with_views(&inputs, true).unwrap();
    let ctx = ForwardCtx::train().with_features(Some(&views));
    let xv = Var::from_tensor(&Tensor::from_vec(x.as_flattened().to_vec(), (2, 2), &dev()).unwrap()).unwrap();
    let out = gates.forward(xv.as_tensor(), &ctx).unwrap();
    let gx = out.sum_all().unwrap().backward().unwrap();
    // Only the pass-through reaches x: d sum / d x = 1.
    assert_eq!(
        gx.get(xv.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
        [[1.0, 1.0], [1.0, 1.0]]
    );
    let logits: Vec<Vec<f32>> = towers
        .iter()
        .map(|t| {
            t.forward(&out, &ctx)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    let out = out.to_vec2::<f32>().unwrap();
    let mut task_gap = 0.0f64;
    for r in 0..2 {
        let xr: Vec<f64> = x[r].iter().map(|&v| f64::from(v)).collect();
        let z = [vec![f64::from(prior[r])], xr.clone()].concat();
        let d0 = gate_nu(&z, &g0);
        let d1 = gate_nu(&z, &g1);
        assert_close(
            &out[r],
            &[xr.clone(), d0.clone(), d1.clone()].concat(),
            &format!("row {r} gates"),
        );
        for (t, w) in tw.iter().enumerate() {
            let h = relu(affine(&mul(&xr, &d0[2 * t..2 * t + 2]), &w[0], &w[1]));
            let logit = affine(&mul(&h, &d1[2 * t..2 * t + 2]), &w[2], &w[3]);
            assert_close(&logits[t][r..=r], &logit, &format!("row {r} task {t} logit"));
        }
        task_gap += d0[..2].iter().zip(&d0[2..]).map(|(a, b)| (a - b).abs()).sum::<f64>();
    }
    // Not vacuous: the two tasks get different factors.
    assert!(task_gap > 0.1, "tasks' factors nearly equal: {task_gap}");
}
