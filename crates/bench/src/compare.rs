//! mtrec against the PyTorch reference (`bench/pytorch/bench.py`), whole
//! processes in alternation (mtrec, PyTorch, PyTorch with fused Adam, then
//! again), on the same data file; medians of the repeats and their ratios.
//! For the hashed-id workloads the reference's tables are sparse
//! (`nn.Embedding(sparse=True)`, `SparseAdam`); PyTorch with dense tables and
//! Adam over everything runs too, for a bounded number of steps, and is
//! reported on its own line. With both large-vocab and small-model, each
//! implementation's large-vocab / small-model ratios follow.

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

/// One PyTorch run: the Adam variant of the dense parameters, and for the
/// dense-table reference line, `--embedding dense` and a step cap.
struct TorchRun<'a> {
    adam: &'a str,
    dense_tables: bool,
    max_steps: Option<usize>,
}

/// The implementation name bench.py reports for a run.
fn torch_name(adam: &str, dense_tables: bool) -> String {
    let mut name = "pytorch".to_string();
    if dense_tables {
        name.push_str("-dense-embedding");
    }
    if adam != "default" {
        name.push_str(&format!("-{adam}-adam"));
    }
    name
}

fn spawn_torch(
    common: &Common,
    python: &str,
    data: &Path,
    w: Workload,
    run: &TorchRun,
) -> Result<RunResult, BenchError> {
    let script = root().join("bench").join("pytorch").join("bench.py");
    let out = std::env::temp_dir().join(format!("mtrec-bench-torch-{}-{}.json", std::process::id(), w.name()));
    let t = common.threads.to_string();
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script)
        .args(["--workload", w.name(), "--adam", run.adam, "--threads", &t])
        .args(["--batch-size", &common.batch_size.to_string()])
        .args(["--warmup-steps", &common.warmup_steps.to_string()])
        .args(["--infer-batches", &common.infer_batches.to_string()])
        .args(["--latency-calls", &common.latency_calls.to_string()])
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(&out)
        .env("OMP_NUM_THREADS", &t)
        .env("MKL_NUM_THREADS", &t);
    if run.dense_tables {
        cmd.args(["--embedding", "dense"]);
    }
    if let Some(n) = run.max_steps {
        cmd.args(["--max-steps", &n.to_string()]);
    }
    let status = cmd
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

fn report(r: &RunResult) {
    eprintln!(
        "    train {:.0}/s{}, infer {:.0}/s, latency {:.0} us, peak RSS {:.0} MB{}",
        r.train_samples_per_s,
        if r.train_rows > 0 && r.train_rows < r.rows {
            format!(" ({} steps)", r.train_steps)
        } else {
            String::new()
        },
        r.infer_samples_per_s,
        r.latency_us_median,
        r.peak_rss_train_mb,
        load_note(r)
    );
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

/// Options of `compare` beyond the common ones.
pub struct CompareOptions<'a> {
    pub repeats: usize,
    pub python: &'a str,
    /// PyTorch Adam variants of the reference (`default`, `fused`, `foreach`).
    pub adams: &'a [String],
    /// Timed steps of the dense-table PyTorch line of the hashed-id
    /// workloads (0: not run).
    pub dense_steps: usize,
}

pub fn compare(common: &Common, o: &CompareOptions, out: Option<PathBuf>) -> Result<(), BenchError> {
    let repeats = o.repeats.max(1);
    let workloads = common.workloads()?;
    let data = workloads
        .iter()
        .map(|&w| common.ensure_data(w).map(|p| (w, p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut runs: Vec<RunResult> = Vec::new();
    for rep in 1..=repeats {
        for (w, path) in &data {
            let w = *w;
            eprintln!("[{rep}/{repeats}] {}: mtrec (load {:.2})", w.name(), load_average());
            let r = spawn_single(common, path, w)?;
            report(&r);
            runs.push(r);
            let mut torch: Vec<(String, TorchRun)> = o
                .adams
                .iter()
                .map(|adam| {
                    (
                        format!("pytorch, {adam} Adam"),
                        TorchRun {
                            adam,
                            dense_tables: false,
                            max_steps: common.max_steps,
                        },
                    )
                })
                .collect();
            if w.id_buckets().is_some() && o.dense_steps > 0 {
                torch.push((
                    format!("pytorch, dense tables + Adam, {} steps", o.dense_steps),
                    TorchRun {
                        adam: "default",
                        dense_tables: true,
                        max_steps: Some(common.max_steps.map_or(o.dense_steps, |m| m.min(o.dense_steps))),
                    },
                ));
            }
            for (label, run) in &torch {
                eprintln!("[{rep}/{repeats}] {}: {label} (load {:.2})", w.name(), load_average());
                let r = spawn_torch(common, o.python, path, w, run)?;
                report(&r);
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
        let refs: Vec<(&String, Medians)> = o
            .adams
            .iter()
            .map(|adam| (adam, medians(&runs, &torch_name(adam, false), w.name())))
            .filter(|(_, m)| m.runs > 0)
            .collect();
        let Some(&(_, pt)) = refs.first() else {
            return Err(BenchError::msg(format!("no PyTorch runs of {}", w.name())));
        };
        let unreliable = refs.iter().map(|(_, m)| m.max_load).fold(me.max_load, f64::max) > crate::BUSY;
        let (train_target, fused_target) = match w {
            Workload::Mmoe => (Some(1.2), Some(1.0)),
            Workload::Ple => (Some(1.0), None),
            Workload::Star | Workload::LargeVocab | Workload::SmallModel => (None, None),
        };
        let mut rows: Vec<(String, f64, f64, f64, Option<f64>, bool)> = Vec::new();
        for (adam, m) in &refs {
            let target = match adam.as_str() {
                "default" => train_target,
                "fused" => fused_target,
                _ => None,
            };
            rows.push((
                format!("train samples/s ({adam} Adam)"),
                me.train,
                m.train,
                me.train / m.train,
                target,
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
            "max_other_cpu_cores": refs.iter().map(|(_, m)| m.max_load).fold(me.max_load, f64::max),
            "unreliable": unreliable,
            "ratios": entries,
        }));
    }
    let dense = dense_lines(&runs, &workloads);
    let pair = vocab_pair(&runs, &workloads, o.adams);
    let out = out.unwrap_or_else(|| root().join("target").join("bench").join("compare.json"));
    write_json(
        &out,
        &json!({
            "threads": common.threads,
            "batch_size": common.batch_size,
            "repeats": repeats,
            "data": data.iter().map(|(w, p)| (w.name().to_string(), json!(p.display().to_string()))).collect::<serde_json::Map<_, _>>(),
            "dense_tables": dense,
            "large_vocab_over_small_model": pair,
            "machine": machine(),
            "summary": summary,
            "runs": runs,
        }),
    )?;
    println!("\nJSON: {}", out.display());
    Ok(())
}

/// The dense-table PyTorch runs of the hashed-id workloads, on their own
/// lines (medians; not a ratio's denominator).
fn dense_lines(runs: &[RunResult], workloads: &[Workload]) -> Vec<serde_json::Value> {
    let name = torch_name("default", true);
    let mut out = Vec::new();
    for &w in workloads {
        let d = medians(runs, &name, w.name());
        if d.runs == 0 {
            continue;
        }
        if out.is_empty() {
            println!("\nPyTorch with dense tables (nn.Embedding + Adam over everything), for reference, not a ratio's denominator:\n");
            println!("| workload | timed steps | train samples/s | inference samples/s | batch-1 latency median (us) | peak RSS training (MB) |");
            println!("|---|---|---|---|---|---|");
        }
        let steps = runs
            .iter()
            .find(|r| r.implementation == name && r.workload == w.name())
            .map_or(0, |r| r.train_steps);
        println!(
            "| {} | {steps} | {:.0} | {:.0} | {:.0} | {:.0} |",
            w.name(),
            d.train,
            d.infer,
            d.lat_median,
            d.rss
        );
        out.push(json!({
            "workload": w.name(), "implementation": name, "timed_steps": steps,
            "train_samples_per_s": d.train, "infer_samples_per_s": d.infer,
            "latency_us_median": d.lat_median, "peak_rss_train_mb": d.rss,
        }));
    }
    out
}

/// Each implementation's large-vocab / small-model ratios, when both ran.
fn vocab_pair(runs: &[RunResult], workloads: &[Workload], adams: &[String]) -> Vec<serde_json::Value> {
    if !(workloads.contains(&Workload::LargeVocab) && workloads.contains(&Workload::SmallModel)) {
        return Vec::new();
    }
    let mut names = vec!["mtrec".to_string()];
    names.extend(adams.iter().map(|a| torch_name(a, false)));
    names.push(torch_name("default", true));
    println!(
        "\nlarge-vocab / small-model (medians; throughput: the share the large vocabulary keeps, higher is better):\n"
    );
    println!("| implementation | train samples/s large / small | ratio | inference samples/s large / small | ratio | batch-1 latency ratio | peak RSS large / small (MB) |");
    println!("|---|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for name in names {
        let l = medians(runs, &name, Workload::LargeVocab.name());
        let s = medians(runs, &name, Workload::SmallModel.name());
        if l.runs == 0 || s.runs == 0 {
            continue;
        }
        println!(
            "| {name} | {:.0} / {:.0} | {:.3} | {:.0} / {:.0} | {:.3} | {:.2} | {:.0} / {:.0} |",
            l.train,
            s.train,
            l.train / s.train,
            l.infer,
            s.infer,
            l.infer / s.infer,
            l.lat_median / s.lat_median,
            l.rss,
            s.rss
        );
        out.push(json!({
            "implementation": name,
            "train_ratio": l.train / s.train,
            "infer_ratio": l.infer / s.infer,
            "latency_ratio": l.lat_median / s.lat_median,
            "large_vocab": {"train": l.train, "infer": l.infer, "latency_us": l.lat_median, "rss_mb": l.rss},
            "small_model": {"train": s.train, "infer": s.infer, "latency_us": s.lat_median, "rss_mb": s.rss},
        }));
    }
    out
}
