//! Reading throughput on census-income `train.data.gz` (59,857 rows, 42
//! columns, gzip CSV): raw record reading, fitting, encoding. A measurement,
//! not a test: `cargo run -p mtrec-data --release --example census_throughput`.
//! The data folder is `MTREC_DATA_DIR`, else `../shared/data`.

use std::path::PathBuf;
use std::time::Instant;

use mtrec_data::read::{self, ReadOptions};
use mtrec_data::{Labels, Preprocessor, TabularSchema, TaskSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    data: TabularSchema,
    tasks: Vec<TaskSpec>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("MTREC_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")));
    let train = dir.join("census-income/train.data.gz");
    if !train.is_file() {
        println!("census-income not found at {} (set MTREC_DATA_DIR)", train.display());
        return Ok(());
    }
    let c: Config = toml::from_str(include_str!("../../../configs/census-income.toml"))?;
    let (schema, tasks) = (c.data, c.tasks);
    let repeats = 5;

    let mut best = [f64::INFINITY; 3];
    let mut rows = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let mut src = read::open(&train, &ReadOptions::of(&schema))?;
        let mut record = csv::StringRecord::new();
        let mut n = 0u64;
        while src.next_row(&mut record)?.is_some() {
            n += 1;
        }
        best[0] = best[0].min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let pre = Preprocessor::fit(&schema, &tasks, &train, None)?;
        best[1] = best[1].min(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let data = pre.encode_file(&train, Labels::Required, None)?;
        best[2] = best[2].min(t.elapsed().as_secs_f64());
        assert_eq!(data.rows() as u64, n);
        rows = n;
    }
    for (name, secs) in ["read records (gunzip + CSV)", "fit", "encode"].iter().zip(best) {
        println!(
            "{name:28} {rows} rows in {:6.1} ms: {:>9.0} rows/s (best of {repeats})",
            secs * 1e3,
            rows as f64 / secs
        );
    }
    Ok(())
}
