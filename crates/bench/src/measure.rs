//! One workload measured in one process, on the library's real code paths:
//! training with `mtrec_train::train_step` (the step `mtrec run` takes:
//! `Model::forward`, the masked task losses, backward, the in-place Adam),
//! inference and batch-1 latency with `Model::forward` in evaluation mode.

use std::time::Instant;

use candle_core::Device;
use mtrec_data::{shuffled, Batch, Dataset};
use mtrec_train::{optimizer, train_step, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::data;
use crate::workload::{self, Workload};
use crate::BenchError;

/// What one run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// `mtrec`, or `pytorch` / `pytorch-fused-adam` for the reference.
    pub implementation: String,
    pub workload: String,
    pub threads: usize,
    pub batch_size: usize,
    pub rows: usize,
    pub parameters: usize,
    /// Timed training steps (one pass over every row, or the first
    /// `--max-steps` batches of it) and the warm-up steps before them.
    pub train_steps: usize,
    /// Rows of the timed training steps (`rows` unless capped by `--max-steps`).
    #[serde(default)]
    pub train_rows: usize,
    pub warmup_steps: usize,
    pub train_samples_per_s: f64,
    /// Mean per-task training loss over the timed pass.
    pub train_loss: Vec<f64>,
    pub infer_samples_per_s: f64,
    pub latency_us_median: f64,
    pub latency_us_p99: f64,
    /// Peak resident memory of the process right after training (MB), and at its end.
    pub peak_rss_train_mb: f64,
    pub peak_rss_end_mb: f64,
    /// `/proc/loadavg` (1 minute) before and after the run (the run itself
    /// adds about its thread count to the load).
    pub load_before: f64,
    pub load_after: f64,
    /// CPU used by other processes while this one ran, in cores (from
    /// `/proc/stat` less this process's own time): above 0.25 the run's
    /// figures are flagged as unreliable.
    #[serde(default)]
    pub other_cpu: f64,
    /// Fused ops (`true`) or candle's plain ops (`MTREC_OPS=plain`).
    #[serde(default)]
    pub fused_ops: bool,
    /// Library versions (e.g. `torch 2.15.0`).
    #[serde(default)]
    pub version: String,
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub threads: usize,
    pub batch_size: usize,
    pub warmup_steps: usize,
    pub infer_batches: usize,
    pub latency_calls: usize,
    /// Timed training steps at most (a quick check; default: the whole pass).
    pub max_steps: Option<usize>,
}

/// The 1-minute load average, or NaN where `/proc/loadavg` is missing.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Busy CPU ticks of the whole machine (`/proc/stat`) and of this process
/// (`/proc/self/stat` user + system), in clock ticks.
pub fn cpu_ticks() -> (f64, f64) {
    let total = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                // user nice system idle iowait irq softirq steal ...
                let v: Vec<f64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                v.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .map(|(_, x)| x)
                    .sum()
            })
        })
        .unwrap_or(f64::NAN);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
            let rest = s.rsplit_once(')').map(|(_, r)| r.to_string())?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(f64::NAN);
    (total, own)
}

/// Cores used by other processes between two [`cpu_ticks`] readings `secs` apart.
pub fn other_cpu(before: (f64, f64), after: (f64, f64), secs: f64) -> f64 {
    // Linux reports ticks at USER_HZ = 100 per second.
    (((after.0 - before.0) - (after.1 - before.1)) / 100.0 / secs.max(1e-9)).max(0.0)
}

/// Peak resident set size of this process in MB (`VmHWM`), NaN if unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Median and 99th percentile of `xs` (sorted in place).
pub fn median_p99(xs: &mut [f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Loads the data file for `w` (with the domain column only where the model
/// reads it), checking that it holds `w`'s kind of data.
pub fn load(w: Workload, path: &std::path::Path) -> Result<(data::Shape, Dataset), BenchError> {
    let rows = data::read(path)?;
    let shape = rows.shape.clone();
    w.check(&shape)
        .map_err(|e| BenchError::msg(format!("{}: {e}", path.display())))?;
    Ok((shape, data::dataset(rows, w.uses_domains())?))
}

/// Trains one warm-up pass of `warmup_steps` batches and one timed pass over
/// every row (its first `max_steps` batches if set), then measures inference
/// and batch-1 latency.
pub fn run(w: Workload, path: &std::path::Path, s: &RunSettings) -> Result<RunResult, BenchError> {
    let load_before = load_average();
    let ticks_before = cpu_ticks();
    let started = Instant::now();
    let (shape, data) = load(w, path)?;
    let model = workload::build(w, &shape, 1)?;
    let cfg = TrainConfig {
        lr: 1e-3,
        batch_size: s.batch_size,
        ..TrainConfig::default()
    };
    let mut opt = optimizer(&model, &cfg)?;
    let weights = vec![1.0; shape.tasks];
    let dev = Device::Cpu;
    let rows = data.rows();

    let warm: Vec<usize> = shuffled(rows, 7)
        .into_iter()
        .take(s.warmup_steps * s.batch_size)
        .collect();
    for batch in data.batches(&warm, s.batch_size, &dev) {
        train_step(&model, &mut opt, &batch?, &weights, None)?;
    }
    let order = shuffled(rows, 1);
    let mut sums = vec![0.0; shape.tasks];
    let mut steps = 0usize;
    let mut train_rows = 0usize;
    let t0 = Instant::now();
    for batch in data
        .batches(&order, s.batch_size, &dev)
        .take(s.max_steps.unwrap_or(usize::MAX))
    {
        let batch = batch?;
        train_rows += batch.rows();
        let losses = train_step(&model, &mut opt, &batch, &weights, None)?;
        for (a, l) in sums.iter_mut().zip(losses) {
            *a += l;
        }
        steps += 1;
    }
    let train_secs = t0.elapsed().as_secs_f64();
    let peak_rss_train_mb = peak_rss_mb();

    // Inference: pre-built batches (the timed part is the forward pass).
    let batches: Vec<Batch> = data
        .batches(&order, s.batch_size, &dev)
        .take(s.infer_batches + 2)
        .collect::<Result<_, _>>()?;
    let full: Vec<&Batch> = batches.iter().filter(|b| b.rows() == s.batch_size).collect();
    for b in full.iter().take(2) {
        model.forward(&b.inputs, false)?;
    }
    let timed = &full[full.len().min(2)..];
    let t0 = Instant::now();
    for b in timed {
        model.forward(&b.inputs, false)?;
    }
    let infer_secs = t0.elapsed().as_secs_f64();
    let infer_rows: usize = timed.iter().map(|b| b.rows()).sum();

    // Batch-1 latency over 256 different rows, each call timed.
    let singles: Vec<Batch> = order
        .iter()
        .take(256)
        .map(|&r| data.batch(&[r], &dev))
        .collect::<Result<_, _>>()?;
    for b in singles.iter().cycle().take(s.latency_calls / 10 + 1) {
        model.forward(&b.inputs, false)?;
    }
    let mut lat = Vec::with_capacity(s.latency_calls);
    for b in singles.iter().cycle().take(s.latency_calls) {
        let t = Instant::now();
        model.forward(&b.inputs, false)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (latency_us_median, latency_us_p99) = median_p99(&mut lat);

    Ok(RunResult {
        implementation: "mtrec".into(),
        workload: w.name().into(),
        threads: s.threads,
        batch_size: s.batch_size,
        rows,
        parameters: model.params().parameter_count(),
        train_steps: steps,
        train_rows,
        warmup_steps: s.warmup_steps,
        train_samples_per_s: train_rows as f64 / train_secs.max(1e-9),
        train_loss: sums.iter().map(|v| v / steps.max(1) as f64).collect(),
        infer_samples_per_s: infer_rows as f64 / infer_secs.max(1e-9),
        latency_us_median,
        latency_us_p99,
        peak_rss_train_mb,
        peak_rss_end_mb: peak_rss_mb(),
        load_before,
        load_after: load_average(),
        other_cpu: other_cpu(ticks_before, cpu_ticks(), started.elapsed().as_secs_f64()),
        fused_ops: mtrec_core::ops::fused(),
        version: format!("mtrec {}, candle-core 0.11.1", env!("CARGO_PKG_VERSION")),
    })
}
