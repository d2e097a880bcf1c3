//! `mtrec-bench` (`cargo xtask bench`): training and inference speed, batch-1
//! latency and peak memory of mtrec's real code paths on fixed workloads,
//! alone or side by side with the PyTorch reference in `bench/pytorch/`.
//!
//! - `run` (the default): each workload in its own process; a table and a JSON file;
//! - `compare`: mtrec and PyTorch (default and fused Adam) alternately, whole
//!   processes (A B C A B C ...), medians of `--repeats` runs, and the ratios;
//! - `profile`: where one training step's time goes, by phase;
//! - `data`: writes a workload's synthetic data file both sides read;
//! - `single`: one workload in this process (what `run` and `compare` spawn).

mod compare;
mod profile;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use mtrec_bench::measure::{self, RunResult, RunSettings};
use mtrec_bench::workload::{self, Workload};
use mtrec_bench::{data, root, BenchError};

// candle allocates a fresh output for every op: mimalloc's thread-local free
// lists make that cheap (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mtrec-bench", about = "mtrec benchmarks (see docs/performance.md)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Workloads, comma-separated: mmoe, ple, star (census-like data),
    /// large-vocab, small-model (hashed-id data).
    #[arg(long, default_value = "mmoe,ple,star", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Threads of every side (RAYON_NUM_THREADS; torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Rows of the synthetic data set (one timed training pass over all of
    /// them); default 200,000 census-like, 180,000 hashed-id rows.
    #[arg(long)]
    rows: Option<usize>,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The data file of every workload named (written first if missing);
    /// default target/bench/census-like-<rows>-<seed>.bin, or
    /// hashed-ids-<buckets>-<rows>-<seed>.bin for large-vocab and small-model.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training steps before the timed pass.
    #[arg(long, default_value_t = 10)]
    warmup_steps: usize,
    /// Timed training steps at most (a quick check; default: one whole pass
    /// over the rows). Training throughput is then over these steps only.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Timed inference batches.
    #[arg(long, default_value_t = 40)]
    infer_batches: usize,
    /// Timed batch-1 forward calls.
    #[arg(long, default_value_t = 3000)]
    latency_calls: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Each workload in its own process: a table and a JSON file.
    Run {
        #[command(flatten)]
        common: Common,
        /// Where the JSON goes (default target/bench/mtrec.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// mtrec and the PyTorch reference alternately, medians and ratios.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Runs per implementation and workload (medians of these).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// The Python interpreter with torch installed.
        #[arg(long, default_value = "python3")]
        python: String,
        /// PyTorch Adam variants of the dense parameters: default
        /// (torch.optim.Adam), fused (fused=True), foreach (foreach=True).
        #[arg(long, default_value = "default,fused", value_delimiter = ',')]
        torch_adam: Vec<String>,
        /// Timed steps of PyTorch with dense tables (nn.Embedding + Adam over
        /// everything), run for large-vocab and small-model and reported on
        /// its own line; 0 leaves it out.
        #[arg(long, default_value_t = 20)]
        dense_steps: usize,
        /// Where the JSON goes (default target/bench/compare.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Where a training step's time goes, by phase.
    Profile {
        #[command(flatten)]
        common: Common,
        /// Timed steps.
        #[arg(long, default_value_t = 40)]
        steps: usize,
    },
    /// GEMM throughput (GFLOP/s) on the MMoE workload's matmul shapes.
    Gemm {
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Writes the synthetic data file of a workload.
    Data {
        /// The workload whose data to write (mmoe, ple and star share theirs).
        #[arg(long, default_value = "mmoe")]
        workload: String,
        /// Rows; default 200,000 census-like, 180,000 hashed-id rows.
        #[arg(long)]
        rows: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// One workload in this process; prints its JSON.
    Single {
        #[command(flatten)]
        common: Common,
        /// Writes the JSON here instead of printing it.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

impl Common {
    fn workloads(&self) -> Result<Vec<Workload>, BenchError> {
        self.workloads.iter().map(|w| Workload::parse(w.trim())).collect()
    }

    fn data_path(&self, w: Workload) -> PathBuf {
        self.data.clone().unwrap_or_else(|| {
            root()
                .join("target")
                .join("bench")
                .join(w.data_file(self.rows.unwrap_or(w.default_rows()), self.seed))
        })
    }

    /// The data file of `w`, generated first if it does not exist.
    fn ensure_data(&self, w: Workload) -> Result<PathBuf, BenchError> {
        let path = self.data_path(w);
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            eprintln!("writing the synthetic data to {}", path.display());
            let shape = w.shape(self.rows.unwrap_or(w.default_rows()), self.seed);
            data::write(&data::generate(&shape)?, &path)?;
        }
        Ok(path)
    }

    fn settings(&self) -> RunSettings {
        RunSettings {
            threads: self.threads,
            batch_size: self.batch_size,
            warmup_steps: self.warmup_steps,
            infer_batches: self.infer_batches,
            latency_calls: self.latency_calls,
            max_steps: self.max_steps,
        }
    }

    /// The arguments that reproduce these settings in a child process.
    fn child_args(&self, data: &Path, w: Workload) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--workloads".into(),
            w.name().into(),
            "--threads".into(),
            self.threads.to_string(),
            "--batch-size".into(),
            self.batch_size.to_string(),
            "--data".into(),
            data.display().to_string(),
            "--warmup-steps".into(),
            self.warmup_steps.to_string(),
            "--infer-batches".into(),
            self.infer_batches.to_string(),
            "--latency-calls".into(),
            self.latency_calls.to_string(),
        ];
        if let Some(n) = self.max_steps {
            args.extend(["--max-steps".into(), n.to_string()]);
        }
        args
    }
}

/// Sets the thread count of candle, gemm and the fused ops (one rayon pool)
/// before anything uses it.
fn set_threads(n: usize) -> Result<(), BenchError> {
    // Edition 2021: still a safe call. Nothing has spawned threads yet.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| BenchError::msg(format!("thread pool: {e}")))
}

/// Runs `mtrec-bench single` for one workload in a fresh process.
pub(crate) fn spawn_single(common: &Common, data: &Path, w: Workload) -> Result<RunResult, BenchError> {
    let exe = std::env::current_exe()?;
    let out = std::env::temp_dir().join(format!("mtrec-bench-{}-{}.json", std::process::id(), w.name()));
    let status = std::process::Command::new(exe)
        .arg("single")
        .args(common.child_args(data, w))
        .arg("--json")
        .arg(&out)
        .status()?;
    if !status.success() {
        return Err(BenchError::msg(format!(
            "mtrec-bench single {} failed: {status}",
            w.name()
        )));
    }
    let r: RunResult = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    std::fs::remove_file(&out).ok();
    Ok(r)
}

/// Other processes' CPU use above which a run is not trusted, in cores.
pub(crate) const BUSY: f64 = 0.25;

/// A note when the machine was not quiet.
pub(crate) fn load_note(r: &RunResult) -> String {
    if r.other_cpu > BUSY {
        format!("  (UNRELIABLE: other processes used {:.2} cores)", r.other_cpu)
    } else {
        String::new()
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), BenchError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(())
}

fn run_all(common: &Common, out: Option<PathBuf>) -> Result<(), BenchError> {
    let mut results = Vec::new();
    for w in common.workloads()? {
        let data = common.ensure_data(w)?;
        eprintln!("running {} ...", w.title());
        results.push(spawn_single(common, &data, w)?);
    }
    println!(
        "| workload | train samples/s | inference samples/s (batch {}) | batch-1 latency median / p99 (us) | peak RSS training (MB) | other processes (cores) |",
        common.batch_size
    );
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} | {:.2}{} |",
            r.workload,
            r.train_samples_per_s,
            r.infer_samples_per_s,
            r.latency_us_median,
            r.latency_us_p99,
            r.peak_rss_train_mb,
            r.other_cpu,
            load_note(r)
        );
    }
    let out = out.unwrap_or_else(|| root().join("target").join("bench").join("mtrec.json"));
    write_json(
        &out,
        &serde_json::json!({ "threads": common.threads, "machine": compare::machine(), "runs": results }),
    )?;
    println!("\nJSON: {}", out.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    mtrec_runner::alloc::keep_freed_memory();
    mtrec_runner::threads::one_compute_pool();
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let common = Cli::parse_from(["mtrec-bench", "run"]);
            match common.command {
                Some(Command::Run { common, out }) => run_all(&common, out),
                _ => Err(BenchError::msg("internal: default command")),
            }
        }
        Some(Command::Run { common, out }) => run_all(&common, out),
        Some(Command::Compare {
            common,
            repeats,
            python,
            torch_adam,
            dense_steps,
            out,
        }) => compare::compare(
            &common,
            &compare::CompareOptions {
                repeats,
                python: &python,
                adams: &torch_adam,
                dense_steps,
            },
            out,
        ),
        Some(Command::Profile { common, steps }) => {
            set_threads(common.threads).and_then(|()| profile::profile(&common, steps))
        }
        Some(Command::Gemm { threads }) => set_threads(threads).and_then(|()| profile::gemm()),
        Some(Command::Data {
            workload,
            rows,
            seed,
            out,
        }) => Workload::parse(workload.trim())
            .and_then(|w| data::generate(&w.shape(rows.unwrap_or(w.default_rows()), seed)))
            .and_then(|d| {
                if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                data::write(&d, &out)
            })
            .map(|()| println!("wrote {}", out.display())),
        Some(Command::Single { common, json }) => set_threads(common.threads).and_then(|()| {
            let w = common
                .workloads()?
                .into_iter()
                .next()
                .ok_or_else(|| BenchError::msg("name one workload"))?;
            let path = common.ensure_data(w)?;
            let r = measure::run(w, &path, &common.settings())?;
            let text = serde_json::to_string_pretty(&r)?;
            match json {
                Some(p) => std::fs::write(p, text)?,
                None => println!("{text}"),
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mtrec-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
