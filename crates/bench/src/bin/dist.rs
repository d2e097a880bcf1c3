//! `mtrec-bench-dist` (feature `distributed`): training throughput of
//! data-parallel training on a bench workload, the real `train_on` loop
//! (exchanges included), and the bytes exchanged per step.
//!
//! ```text
//! # data once:  target/release/mtrec-bench data --workload large-vocab --out target/bench/lv.bin
//! RAYON_NUM_THREADS=1 mpirun -np 2 -x RAYON_NUM_THREADS target/release/mtrec-bench-dist \
//!     --workload large-vocab --data target/bench/lv.bin --batch-size 512
//! RAYON_NUM_THREADS=2 target/release/mtrec-bench-dist --workload large-vocab --data target/bench/lv.bin --batch-size 1024
//! ```
//! Both lines train the same global batches (2 x 512 = 1 x 1024). Epoch 1
//! warms up; epoch 2 is timed (its rows per second, all ranks' rows). Rank 0
//! prints one JSON line.

use std::path::PathBuf;

use clap::Parser;
use mtrec_bench::measure::load;
use mtrec_bench::workload::{self, Workload};
use mtrec_bench::BenchError;
use mtrec_data::Split;
use mtrec_train::{train_on, InMemory, TrainConfig, TrainOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mtrec-bench-dist",
    about = "Data-parallel training throughput (run under mpirun)"
)]
struct Cli {
    /// mmoe, ple, star (census-like), large-vocab, small-model (hashed ids).
    #[arg(long, default_value = "mmoe")]
    workload: String,
    /// The workload's data file (`mtrec-bench data --workload W --out FILE`).
    #[arg(long)]
    data: PathBuf,
    /// Rows per rank per step (the global batch is ranks x this).
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Training rows (the first of the file); the next 4096 validate.
    #[arg(long)]
    rows: Option<usize>,
}

fn main() -> std::process::ExitCode {
    mtrec_runner::alloc::keep_freed_memory();
    mtrec_runner::threads::one_compute_pool();
    workload::link();
    let world = match mtrec_runner::distributed::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(Cli::parse());
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            mtrec_runner::distributed::abort_if_distributed(&e);
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    drop(world);
    code
}

fn run(cli: Cli) -> Result<(), BenchError> {
    let w = Workload::parse(&cli.workload)?;
    let (shape, data) = load(w, &cli.data)?;
    let model = workload::build(w, &shape, 1)?;
    let valid = 4096.min(data.rows() / 10);
    let train = cli.rows.unwrap_or(data.rows() - valid).min(data.rows() - valid);
    let split = Split {
        train: (0..train).collect(),
        valid: (train..train + valid).collect(),
        test: Vec::new(),
    };
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: cli.batch_size,
        eval_batch_size: 4096,
        lr: 1e-3,
        patience: 0,
        conflict_every: 0,
        ..TrainConfig::default()
    };
    let mut logs = Vec::new();
    train_on(
        &model,
        &InMemory::new(&data, &split),
        &cfg,
        TrainOptions::default(),
        |l| logs.push(l.clone()),
    )?;
    let c = mtrec_distributed::current();
    if c.is_root() {
        let timed = logs.last().ok_or_else(|| BenchError::msg("no epoch trained"))?;
        let line = serde_json::json!({
            "workload": w.name(),
            "ranks": c.size(),
            "threads_per_rank": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "batch_per_rank": cli.batch_size,
            "global_batch": cli.batch_size * c.size(),
            "train_rows": train,
            "train_samples_per_s": timed.rows_per_second,
            "train_loss": timed.train_loss,
            "exchange": timed.exchange,
        });
        println!("{line}");
    }
    Ok(())
}
