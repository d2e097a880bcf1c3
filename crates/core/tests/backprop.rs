//! candle's backward pass as patched in `vendor/candle-core` (the first
//! gradient reaching a tensor is stored as is, not added into zeros):
//! gradients summed over several consumers, through views (transpose,
//! broadcast, sum) and from a single consumer, checked against hand-computed
//! values, and every stored gradient contiguous as upstream's were.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-5, "element {i}: got {g}, want {w}");
    }
}

#[test]
fn several_consumers_and_views_sum_their_gradients() {
    let dev = Device::Cpu;
    let xv = [1.0f32, -2.0, 0.5, 3.0, 0.25, -1.0];
    let x = Var::from_vec(xv.to_vec(), (2, 3), &dev).unwrap();
    let w = Var::from_vec(vec![0.5f32, -1.5, 2.0], 3, &dev).unwrap();
    let r = Tensor::new(&[1.0f32, 2.0, 3.0], &dev).unwrap();
    let m = Tensor::new(&[[4.0f32], [-5.0]], &dev).unwrap();
    // Four consumers of x: a broadcast product with a constant, a transposed
    // view into a matmul, a row sum squared, and a broadcast product with the
    // variable w (which gets its own gradient through the broadcast).
    let t1 = x.broadcast_mul(&r).unwrap().sum_all().unwrap();
    let t2 = x.t().unwrap().matmul(&m).unwrap().sum_all().unwrap();
    let t3 = x.sum_keepdim(1).unwrap().sqr().unwrap().sum_all().unwrap();
    let t4 = x.broadcast_mul(&w).unwrap().sum_all().unwrap();
    let loss = (((t1 + t2).unwrap() + t3).unwrap() + t4).unwrap();
    let grads = loss.backward().unwrap();

    let gx = grads.get(&x).unwrap();
    let gw = grads.get(&w).unwrap();
    assert!(gx.is_contiguous() && gw.is_contiguous());
    let s = [xv[0] + xv[1] + xv[2], xv[3] + xv[4] + xv[5]];
    let (rv, mv, wv) = ([1.0f32, 2.0, 3.0], [4.0f32, -5.0], [0.5f32, -1.5, 2.0]);
    let want_x: Vec<f32> = (0..6)
        .map(|k| {
            let (i, j) = (k / 3, k % 3);
            rv[j] + mv[i] + 2.0 * s[i] + wv[j]
        })
        .collect();
    close(&vals(gx), &want_x);
    let want_w: Vec<f32> = (0..3).map(|j| xv[j] + xv[3 + j]).collect();
    close(&vals(gw), &want_w);
}

#[test]
fn a_single_consumer_through_a_view_is_stored_contiguous() {
    let dev = Device::Cpu;
    // p's only consumer is a transpose: the gradient reaching p is a
    // transposed view of the matmul's, and must be stored as p's layout.
    let p = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], (3, 2), &dev).unwrap();
    let a = Tensor::new(&[[1.0f32, 0.0], [2.0, -1.0]], &dev).unwrap();
    let loss = a.matmul(&p.t().unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gp = grads.get(&p).unwrap();
    assert!(gp.is_contiguous());
    assert_eq!(gp.dims(), &[3, 2]);
    // loss = sum_{i,k} sum_j a[i,j] p[k,j]: d/dp[k,j] = sum_i a[i,j].
    close(&vals(gp), &[3.0, -1.0, 3.0, -1.0, 3.0, -1.0]);

    // A broadcast view as the only gradient (the backward of a sum).
    let q = Var::from_vec(vec![1.0f32, 2.0, 3.0], 3, &dev).unwrap();
    let grads = (q.sum_all().unwrap() * 2.0).unwrap().backward().unwrap();
    let gq = grads.get(&q).unwrap();
    assert!(gq.is_contiguous());
    close(&vals(gq), &[2.0, 2.0, 2.0]);
}

#[test]
fn subtraction_negates_a_first_gradient_and_subtracts_later_ones() {
    let dev = Device::Cpu;
    let x = Var::from_vec(vec![1.0f32, 2.0], 2, &dev).unwrap();
    let c = Tensor::new(&[3.0f32, 4.0], &dev).unwrap();
    // d/dx of sum(c - x) + sum(c - x*x) = -1 - 2x.
    let l1 = (&c - x.as_tensor()).unwrap().sum_all().unwrap();
    let l2 = (&c - x.sqr().unwrap()).unwrap().sum_all().unwrap();
    let grads = (l1 + l2).unwrap().backward().unwrap();
    close(&vals(grads.get(&x).unwrap()), &[-3.0, -5.0]);
}

/// The identity, whose backward returns a gradient of the wrong shape.
struct BadBackward;

impl candle_core::CustomOp1 for BadBackward {
    fn name(&self) -> &'static str {
        "bad-backward"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Ok((s.clone(), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.sum_keepdim(0)?))
    }
}

#[test]
fn a_first_gradient_of_the_wrong_shape_is_an_error() {
    // Upstream's `zeros_like(x) + grad` rejected it; storing the first
    // gradient as is must not accept it silently.
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2), &Device::Cpu).unwrap();
    let y = x.apply_op1(BadBackward).unwrap();
    let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("shape mismatch"), "{err}");
}
