//! Where one training step's time goes: the phases of
//! `mtrec_train::train_step` (batch gathering, `Model::forward`, the task
//! losses, backward, Adam) timed one by one on the same calls, next to the
//! real `train_step` for the same number of steps (their sums should agree).
//! For a finer, per-function picture run the binary under `perf record -g`
//! (docs/performance.md).

use std::time::Instant;

use candle_core::{Device, Tensor, D};
use mtrec_core::loss;
use mtrec_data::shuffled;
use mtrec_train::{optimizer, train_step, TrainConfig};

use crate::measure::load_average;
use crate::{measure, workload, BenchError, Common};

pub fn profile(common: &Common, steps: usize) -> Result<(), BenchError> {
    for w in common.workloads()? {
        let path = common.ensure_data(w)?;
        let (shape, data) = measure::load(w, &path)?;
        let model = workload::build(w, &shape, 1)?;
        let cfg = TrainConfig {
            lr: 1e-3,
            batch_size: common.batch_size,
            ..TrainConfig::default()
        };
        let mut opt = optimizer(&model, &cfg)?;
        let dev = Device::Cpu;
        let weights = vec![1.0; shape.tasks];
        let order = shuffled(data.rows(), 3);
        let bs = common.batch_size;
        let batch_of = |i: usize| {
            let at = (i * bs) % (data.rows() - bs + 1);
            data.batch(&order[at..at + bs], &dev)
        };
        let load = load_average();
        for i in 0..common.warmup_steps {
            train_step(&model, &mut opt, &batch_of(i)?, &weights, None)?;
        }
        // The real step, for reference.
        let t0 = Instant::now();
        for i in 0..steps {
            train_step(&model, &mut opt, &batch_of(i)?, &weights, None)?;
        }
        let real = t0.elapsed().as_secs_f64() / steps as f64;
        // The same calls, phase by phase.
        let mut t = [0.0f64; 5];
        for i in 0..steps {
            let c = Instant::now();
            let batch = batch_of(i)?;
            t[0] += c.elapsed().as_secs_f64();
            let c = Instant::now();
            let out = model.forward(&batch.inputs, true)?;
            t[1] += c.elapsed().as_secs_f64();
            let c = Instant::now();
            let mut total: Option<Tensor> = None;
            for (k, (task, o)) in model.tasks().iter().zip(&out.outputs).enumerate() {
                let labels = batch.labels.narrow(D::Minus1, k, 1)?.squeeze(1)?;
                let mask = batch.masks.narrow(D::Minus1, k, 1)?.squeeze(1)?;
                let l = loss::task_loss(task.kind, o, &labels, &mask)?;
                let _ = l.to_scalar::<f32>()?;
                let wl = (l * weights[k])?;
                total = Some(match total {
                    None => wl,
                    Some(t) => (t + wl)?,
                });
            }
            let total = total.ok_or_else(|| BenchError::msg("no task"))?;
            t[2] += c.elapsed().as_secs_f64();
            let c = Instant::now();
            let grads = total.backward()?;
            t[3] += c.elapsed().as_secs_f64();
            let c = Instant::now();
            opt.step(&grads, &out.touched)?;
            drop(grads);
            t[4] += c.elapsed().as_secs_f64();
        }
        let sum: f64 = t.iter().sum();
        println!(
            "\n{} ({} parameters), batch {bs}, {} threads, {steps} steps, load {load:.2} -> {:.2}",
            w.title(),
            model.params().parameter_count(),
            common.threads,
            load_average()
        );
        println!(
            "real train_step: {:.2} ms/step ({:.0} samples/s)",
            real * 1e3,
            bs as f64 / real
        );
        println!("| phase | ms/step | share |");
        println!("|---|---|---|");
        let names = [
            "batch gathering (Dataset::batch)",
            "forward (Model::forward)",
            "task losses",
            "backward",
            "optimizer step (dense Adam + touched table rows)",
        ];
        for (n, v) in names.iter().zip(t) {
            println!("| {n} | {:.2} | {:.0}% |", v / steps as f64 * 1e3, v / sum * 100.0);
        }
        println!("| sum of phases | {:.2} | |", sum / steps as f64 * 1e3);
    }
    Ok(())
}

/// GFLOP/s of candle's matmul (the `gemm` crate, as the fused ops call it)
/// on the shapes of the MMoE training step: `[m, k] x [k, n]`, `t` marking a
/// transposed operand.
pub fn gemm() -> Result<(), BenchError> {
    let dev = Device::Cpu;
    let shapes: [(usize, usize, usize, bool, bool, &str); 5] = [
        (1024, 650, 256, false, false, "expert layer 1 forward (per expert)"),
        (650, 1024, 256, true, false, "expert layer 1 weight gradient"),
        (1024, 256, 650, false, true, "expert layer 1 input gradient"),
        (1024, 256, 128, false, false, "expert layer 2 forward"),
        (1024, 650, 2048, false, false, "the whole bank's layer 1 as one matmul"),
    ];
    println!("| shape (m x k x n) | what | GFLOP/s |");
    println!("|---|---|---|");
    for (m, k, n, tl, tr, what) in shapes {
        let a = if tl {
            Tensor::randn(0f32, 1.0, (k, m), &dev)?.t()?
        } else {
            Tensor::randn(0f32, 1.0, (m, k), &dev)?
        };
        let b = if tr {
            Tensor::randn(0f32, 1.0, (n, k), &dev)?.t()?
        } else {
            Tensor::randn(0f32, 1.0, (k, n), &dev)?
        };
        for _ in 0..5 {
            a.matmul(&b)?;
        }
        let it = 40;
        let t0 = Instant::now();
        for _ in 0..it {
            a.matmul(&b)?;
        }
        let dt = t0.elapsed().as_secs_f64() / it as f64;
        println!(
            "| {m} x {k} x {n}{}{} | {what} | {:.1} |",
            if tl { " (lhs^T)" } else { "" },
            if tr { " (rhs^T)" } else { "" },
            2.0 * (m * n * k) as f64 / dt / 1e9
        );
    }
    println!("load {:.2}", load_average());
    Ok(())
}
