//! mtrec against the PyTorch reference (`bench/pytorch/bench.py`), whole
//! processes in alternation (mtrec, PyTorch, PyTorch with fused Adam, then
//! again), on the same data file; medians of the repeats and their ratios.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::measure::{load_average, RunResult};
use crate::workload::Workload;
use crate::{load_note, root, spawn_single, write_json, BenchError, Common};

/// CPU model, whether it has AVX-512, and the core count.
pub fn machine() -> serde_json::Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "avx512f": flags.split_whitespace().any(|f| f == "avx512f"),
        "avx2": flags.split_whitespace().any(|f| f == "avx2"),
    })
}

fn spawn_torch(common: &Common, python: &str, data: &Path, w: Workload, adam: &str) -> Result<RunResult, BenchError> {
    let script = root().join("bench").join("pytorch").join("bench.py");
    let out = std::env::temp_dir().join(format!("mtrec-bench-torch-{}-{}.json", std::process::id(), w.name()));
    let t = common.threads.to_string();
    let status = std::process::Command::new(python)
        .arg(&script)
        .args(["--workload", w.name(), "--adam", adam, "--threads", &t])
        .args(["--batch-size", &common.batch_size.to_string()])
        .args(["--warmup-steps", &common.warmup_steps.to_string()])
        .args(["--infer-batches", &common.infer_batches.to_string()])
        .args(["--latency-calls", &common.latency_calls.to_string()])
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(&out)
        .env("OMP_NUM_THREADS", &t)
        .env("MKL_NUM_THREADS", &t)
        .status()
        .map_err(|e| BenchError::msg(format!("cannot start `{python} {}`: {e}", script.display())))?;
    if !status.success() {
        return Err(BenchError::msg(format!(
            "`{python} {}` failed ({status}); is torch installed (`pip install torch`)?",
            script.display()
        )));
    }
    let r: RunResult = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    std::fs::remove_file(&out).ok();
    Ok(r)
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Medians of one implementation's runs of one workload.
#[derive(Clone, Copy, Debug, Default)]
struct Medians {
    runs: usize,
    train: f64,
    infer: f64,
    lat_median: f64,
    lat_p99: f64,
    rss: f64,
    max_load: f64,
}

fn medians(runs: &[RunResult], imp: &str, w: &str) -> Medians {
    let mine: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.implementation == imp && r.workload == w)
        .collect();
    let m = |f: fn(&RunResult) -> f64| median(mine.iter().map(|r| f(r)).collect());
    Medians {
        runs: mine.len(),
        train: m(|r| r.train_samples_per_s),
        infer: m(|r| r.infer_samples_per_s),
        lat_median: m(|r| r.latency_us_median),
        lat_p99: m(|r| r.latency_us_p99),
        rss: m(|r| r.peak_rss_train_mb),
        max_load: mine.iter().map(|r| r.other_cpu).fold(0.0, f64::max),
    }
}

fn meets(ratio: f64, target: f64, higher_better: bool) -> &'static str {
    if ratio.is_nan() {
        "-"
    } else if (higher_better && ratio >= target) || (!higher_better && ratio <= target) {
        "yes"
    } else {
        "NO"
    }
}

pub fn compare(
    common: &Common,
    repeats: usize,
    python: &str,
    adams: &[String],
    out: Option<PathBuf>,
) -> Result<(), BenchError> {
    let data = common.ensure_data()?;
    let workloads = common.workloads()?;
    let mut runs: Vec<RunResult> = Vec::new();
    for rep in 1..=repeats.max(1) {
        for &w in &workloads {
            eprintln!("[{rep}/{repeats}] {}: mtrec (load {:.2})", w.name(), load_average());
            let r = spawn_single(common, &data, w)?;
            eprintln!(
                "    train {:.0}/s, infer {:.0}/s, latency {:.0} us{}",
                r.train_samples_per_s,
                r.infer_samples_per_s,
                r.latency_us_median,
                load_note(&r)
            );
            runs.push(r);
            for adam in adams {
                eprintln!(
                    "[{rep}/{repeats}] {}: pytorch, {adam} Adam (load {:.2})",
                    w.name(),
                    load_average()
                );
                let r = spawn_torch(common, python, &data, w, adam)?;
                eprintln!(
                    "    train {:.0}/s, infer {:.0}/s, latency {:.0} us{}",
                    r.train_samples_per_s,
                    r.infer_samples_per_s,
                    r.latency_us_median,
                    load_note(&r)
                );
                runs.push(r);
            }
        }
    }

    let mut summary = Vec::new();
    println!(
        "\nmedians of {repeats} alternating runs, {} threads each side, batch {}:\n",
        common.threads, common.batch_size
    );
    println!("| workload | metric | mtrec | PyTorch | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for &w in &workloads {
        let me = medians(&runs, "mtrec", w.name());
        let pt = medians(&runs, "pytorch", w.name());
        let fu = medians(&runs, "pytorch-fused-adam", w.name());
        let unreliable = me.max_load.max(pt.max_load).max(fu.max_load) > crate::BUSY;
        let (train_target, fused_target) = match w {
            Workload::Mmoe => (Some(1.2), Some(1.0)),
            Workload::Ple => (Some(1.0), None),
            Workload::Star => (None, None),
        };
        let mut rows: Vec<(String, f64, f64, f64, Option<f64>, bool)> = Vec::new();
        rows.push((
            "train samples/s (default Adam)".into(),
            me.train,
            pt.train,
            me.train / pt.train,
            train_target,
            true,
        ));
        if fu.runs > 0 {
            rows.push((
                "train samples/s (fused Adam)".into(),
                me.train,
                fu.train,
                me.train / fu.train,
                fused_target,
                true,
            ));
        }
        rows.push((
            "inference samples/s".into(),
            me.infer,
            pt.infer,
            me.infer / pt.infer,
            Some(1.0),
            true,
        ));
        rows.push((
            "batch-1 latency median (us)".into(),
            me.lat_median,
            pt.lat_median,
            me.lat_median / pt.lat_median,
            Some(0.6),
            false,
        ));
        rows.push((
            "batch-1 latency p99 (us)".into(),
            me.lat_p99,
            pt.lat_p99,
            me.lat_p99 / pt.lat_p99,
            None,
            false,
        ));
        rows.push((
            "peak RSS training (MB)".into(),
            me.rss,
            pt.rss,
            me.rss / pt.rss,
            Some(0.5),
            false,
        ));
        let mut entries = Vec::new();
        for (metric, a, b, ratio, target, higher) in rows {
            let (t, ok) = match target {
                Some(t) => (
                    format!("{} {t}", if higher { ">=" } else { "<=" }),
                    meets(ratio, t, higher),
                ),
                None => ("-".to_string(), "-"),
            };
            println!(
                "| {} | {metric} | {a:.0} | {b:.0} | {ratio:.2} | {t} | {ok}{} |",
                w.name(),
                if unreliable {
                    " (other processes busy: unreliable)"
                } else {
                    ""
                }
            );
            entries.push(json!({
                "metric": metric, "mtrec": a, "pytorch": b, "ratio": ratio,
                "target": target, "higher_is_better": higher, "met": ok,
            }));
        }
        summary.push(json!({
            "workload": w.name(),
            "title": w.title(),
            "max_other_cpu_cores": me.max_load.max(pt.max_load).max(fu.max_load),
            "unreliable": unreliable,
            "ratios": entries,
        }));
    }
    let out = out.unwrap_or_else(|| root().join("target").join("bench").join("compare.json"));
    write_json(
        &out,
        &json!({
            "threads": common.threads,
            "batch_size": common.batch_size,
            "repeats": repeats,
            "data": data.display().to_string(),
            "machine": machine(),
            "summary": summary,
            "runs": runs,
        }),
    )?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
