//! The fused ops against candle's autograd: values and every gradient, on
//! random inputs, relative error below 1e-4.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};
use mtrec_core::ops::{self, Activation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Runs `f` on fresh variables holding `inputs` on the fused and on the
/// plain path; compares the outputs and the gradients of `sum(out * probe)`.
fn check(name: &str, inputs: &[Tensor], probe_seed: u64, f: impl Fn(&[Tensor]) -> Tensor) {
    let run = |fused: bool| {
        ops::with_fused(fused, || {
            let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let out = f(&ts);
            let probe = random(&mut StdRng::seed_from_u64(probe_seed), out.dims(), 1.0);
            let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
            (out, g)
        })
    };
    let (fo, fg) = run(true);
    let (po, pg) = run(false);
    let e = rel_err(&fo, &po);
    assert!(e < 1e-4, "{name}: output relative error {e}");
    for (i, (a, b)) in fg.iter().zip(&pg).enumerate() {
        let e = rel_err(a, b);
        assert!(e < 1e-4, "{name}: gradient of input {i} relative error {e}");
    }
}

const ACTS: [Activation; 5] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Softmax,
];

#[test]
fn linear_layer_matches_autograd() {
    let mut rng = StdRng::seed_from_u64(1);
    for (k, act) in ACTS.into_iter().enumerate() {
        for &(rows, d, o) in &[(7, 5, 3), (300, 40, 24), (1, 13, 1)] {
            let x = random(&mut rng, &[rows, d], 1.0);
            let w = random(&mut rng, &[d, o], 0.5);
            let b = random(&mut rng, &[o], 0.5);
            let name = format!("layer {act:?} {rows}x{d}x{o}");
            check(&name, &[x.clone(), w.clone(), b], k as u64, |t| {
                ops::linear_act(&t[0], &t[1], Some(&t[2]), act).unwrap()
            });
            check(&format!("{name} no bias"), &[x, w], k as u64, |t| {
                ops::linear_act(&t[0], &t[1], None, act).unwrap()
            });
        }
    }
}

#[test]
fn expert_bank_matches_autograd() {
    let mut rng = StdRng::seed_from_u64(2);
    for (k, act) in ACTS.into_iter().enumerate() {
        for &(n, rows, d, o) in &[(3, 9, 6, 4), (8, 256, 65, 32), (2, 1, 7, 5)] {
            let w = random(&mut rng, &[n, d, o], 0.5);
            let b = random(&mut rng, &[n, 1, o], 0.5);
            // Shared input [B, d] and per-expert input [n, B, d].
            let xs = random(&mut rng, &[rows, d], 1.0);
            check(
                &format!("bank {act:?} shared {n}x{rows}x{d}x{o}"),
                &[xs, w.clone(), b.clone()],
                k as u64,
                |t| ops::linear_act(&t[0], &t[1], Some(&t[2]), act).unwrap(),
            );
            let xb = random(&mut rng, &[n, rows, d], 1.0);
            check(
                &format!("bank {act:?} per-expert {n}x{rows}x{d}x{o}"),
                &[xb, w, b],
                k as u64,
                |t| ops::linear_act(&t[0], &t[1], Some(&t[2]), act).unwrap(),
            );
        }
    }
}

#[test]
fn two_stacked_bank_layers_match_autograd() {
    // The MMoE expert bank: shared input, two fused layers, gradients flow
    // through the first layer's output into the second.
    let mut rng = StdRng::seed_from_u64(3);
    let inputs = [
        random(&mut rng, &[64, 20], 1.0),
        random(&mut rng, &[4, 20, 16], 0.4),
        random(&mut rng, &[4, 1, 16], 0.4),
        random(&mut rng, &[4, 16, 8], 0.4),
    ];
    check("two bank layers", &inputs, 9, |t| {
        let h = ops::linear_act(&t[0], &t[1], Some(&t[2]), Activation::Relu).unwrap();
        ops::linear_act(&h, &t[3], None, Activation::Tanh).unwrap()
    });
}

#[test]
fn mix_matches_autograd() {
    let mut rng = StdRng::seed_from_u64(4);
    for &(n1, n2, rows, d) in &[(3, 0, 5, 4), (8, 0, 300, 128), (2, 2, 50, 16), (1, 3, 1, 9)] {
        let w = ops::with_fused(false, || {
            candle_nn::ops::softmax(&random(&mut rng, &[rows, n1 + n2], 2.0), 1).unwrap()
        });
        let b1 = random(&mut rng, &[n1, rows, d], 1.0);
        if n2 == 0 {
            check(&format!("mix {n1}x{rows}x{d}"), &[w, b1], 5, |t| {
                ops::mix(&t[0], &t[1..]).unwrap()
            });
        } else {
            let b2 = random(&mut rng, &[n2, rows, d], 1.0);
            check(&format!("mix {n1}+{n2}x{rows}x{d}"), &[w, b1, b2], 5, |t| {
                ops::mix(&t[0], &t[1..]).unwrap()
            });
        }
    }
}

#[test]
fn mix_of_three_banks_matches_autograd() {
    let mut rng = StdRng::seed_from_u64(9);
    let w = ops::with_fused(false, || {
        candle_nn::ops::softmax(&random(&mut rng, &[40, 6], 2.0), 1).unwrap()
    });
    let banks: Vec<Tensor> = (0..3).map(|_| random(&mut rng, &[2, 40, 8], 1.0)).collect();
    let mut inputs = vec![w];
    inputs.extend(banks);
    check("mix of three banks", &inputs, 10, |t| ops::mix(&t[0], &t[1..]).unwrap());
}

#[test]
fn gate_then_mix_matches_autograd() {
    // A softmax gate (fused linear + softmax, no bias) mixing a bank that is
    // also read by the gate's selector path: gradients from both reach x.
    let mut rng = StdRng::seed_from_u64(5);
    let inputs = [
        random(&mut rng, &[128, 30], 1.0),
        random(&mut rng, &[30, 6], 0.5),
        random(&mut rng, &[6, 30, 12], 0.5),
        random(&mut rng, &[6, 1, 12], 0.5),
    ];
    check("gate and mix", &inputs, 6, |t| {
        let w = ops::linear_act(&t[0], &t[1], None, Activation::Softmax).unwrap();
        let bank = ops::linear_act(&t[0], &t[2], Some(&t[3]), Activation::Relu).unwrap();
        ops::mix(&w, &[bank]).unwrap()
    });
}

#[test]
fn non_contiguous_inputs_are_accepted() {
    let mut rng = StdRng::seed_from_u64(6);
    let x = random(&mut rng, &[10, 8], 1.0).t().unwrap(); // [8, 10], strided
    let w = random(&mut rng, &[10, 4], 1.0);
    check("transposed input", &[x, w], 7, |t| {
        ops::linear_act(&t[0].t().unwrap().t().unwrap(), &t[1], None, Activation::Relu).unwrap()
    });
}

#[test]
fn shape_mismatch_is_an_error_not_a_panic() {
    let x = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((5, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(ops::linear_act(&x, &w, None, Activation::Relu).is_err());
    let wb = Tensor::zeros((2, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let bad_bias = Tensor::zeros((3, 1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(ops::linear_act(&x, &wb, Some(&bad_bias), Activation::Relu).is_err());
    let gw = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let bank = Tensor::zeros((2, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(ops::mix(&gw, &[bank]).is_err());
}

#[test]
fn embedding_gather_matches_autograd() {
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, fields, vocab, dim, dense) = (33, 5, 40, 4, 3);
    let ids: Vec<u32> = (0..rows * fields).map(|_| rng.random_range(0..vocab as u32)).collect();
    let table = random(&mut rng, &[vocab, dim], 1.0);
    let x = random(&mut rng, &[rows, dense], 1.0);
    let idt = Tensor::from_vec(ids.clone(), rows * fields, &Device::Cpu).unwrap();
    check("embedding gather + dense", &[table.clone(), x], 8, |t| {
        if ops::fused() {
            ops::embed_concat(&t[0], ids.clone(), fields, Some(&t[1])).unwrap()
        } else {
            let e = t[0]
                .index_select(&idt, 0)
                .unwrap()
                .reshape((rows, fields * dim))
                .unwrap();
            Tensor::cat(&[e, t[1].clone()], 1).unwrap()
        }
    });
    check("embedding gather", std::slice::from_ref(&table), 8, |t| {
        if ops::fused() {
            ops::embed_concat(&t[0], ids.clone(), fields, None).unwrap()
        } else {
            t[0].index_select(&idt, 0)
                .unwrap()
                .reshape((rows, fields * dim))
                .unwrap()
        }
    });
    assert!(ops::embed_concat(&table, vec![vocab as u32], 1, None).is_err());
}
