//! The benchmark's synthetic "census-like" rows, and the file both the Rust
//! and the PyTorch side read them from (identical data on both sides).
//!
//! Rows: 40 categorical fields (vocabulary 1000 each, ids skewed towards
//! small values as real categorical data is), 10 dense features N(0, 1), a
//! domain id in 0..3 (sizes 50/30/20%), and two binary labels drawn from a
//! logistic model over hidden per-id effects, the dense features and the
//! domain, so that training has something to learn. All from one seeded
//! `StdRng`.
//!
//! File format (little-endian), read by `bench/pytorch/bench.py`:
//! - line 1: `mtrec-bench-data 1`
//! - line 2: a JSON header: `rows`, `fields`, `vocab`, `dense`, `tasks`,
//!   `domains`, `seed` and `sections`, each `{name, dtype, shape, offset}`
//!   with `offset` in bytes from the first byte after line 2;
//! - the sections: `sparse` int32 `[rows, fields]`, `dense` float32
//!   `[rows, dense]`, `labels` float32 `[rows, tasks]`, `domains` int32 `[rows]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use mtrec_core::{TaskInfo, TaskKind};
use mtrec_data::{Dataset, DenseColumns, DomainColumn, SparseColumns};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::BenchError;

const MAGIC: &str = "mtrec-bench-data 1";

/// The shape of the benchmark data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub rows: usize,
    pub fields: usize,
    pub vocab: usize,
    pub dense: usize,
    pub tasks: usize,
    pub domains: usize,
    pub seed: u64,
}

impl Shape {
    /// The census-like workload: 40 fields x 1000 ids, 10 dense
    /// features, 2 binary tasks, 3 domains.
    pub fn census_like(rows: usize, seed: u64) -> Self {
        Self {
            rows,
            fields: 40,
            vocab: 1000,
            dense: 10,
            tasks: 2,
            domains: 3,
            seed,
        }
    }
}

/// The generated columns, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Rows {
    pub shape: Shape,
    pub sparse: Vec<u32>,
    pub dense: Vec<f32>,
    pub labels: Vec<f32>,
    pub domains: Vec<u32>,
}

fn normal(std: f64) -> Result<Normal<f64>, BenchError> {
    Normal::new(0.0, std).map_err(|e| BenchError::msg(format!("normal distribution: {e}")))
}

/// Draws the rows of `shape` from its seed.
pub fn generate(shape: &Shape) -> Result<Rows, BenchError> {
    let Shape {
        rows,
        fields,
        vocab,
        dense,
        tasks,
        domains,
        seed,
    } = shape.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let n01 = normal(1.0)?;
    // Hidden effects: per task, per field and id; per task, per dense feature.
    let effects: Vec<f32> = (0..tasks * fields * vocab)
        .map(|_| n01.sample(&mut rng) as f32 * 0.15)
        .collect();
    let slopes: Vec<f32> = (0..tasks * dense).map(|_| n01.sample(&mut rng) as f32 * 0.3).collect();
    let shifts: Vec<f32> = (0..tasks * domains.max(1))
        .map(|_| n01.sample(&mut rng) as f32 * 0.5)
        .collect();
    let mut out = Rows {
        shape: shape.clone(),
        sparse: Vec::with_capacity(rows * fields),
        dense: Vec::with_capacity(rows * dense),
        labels: Vec::with_capacity(rows * tasks),
        domains: Vec::with_capacity(rows),
    };
    for _ in 0..rows {
        let u: f64 = rng.random();
        let dom = if domains <= 1 || u < 0.5 {
            0
        } else if u < 0.8 || domains == 2 {
            1
        } else {
            2 + rng.random_range(0..domains - 2)
        };
        out.domains.push(dom as u32);
        let base = out.sparse.len();
        for _ in 0..fields {
            let u: f64 = rng.random();
            out.sparse.push(((u * u * vocab as f64) as usize).min(vocab - 1) as u32);
        }
        let dbase = out.dense.len();
        for _ in 0..dense {
            out.dense.push(n01.sample(&mut rng) as f32);
        }
        for k in 0..tasks {
            let mut logit = shifts[k * domains.max(1) + dom] - 1.0;
            for f in 0..fields {
                logit += effects[(k * fields + f) * vocab + out.sparse[base + f] as usize];
            }
            for j in 0..dense {
                logit += slopes[k * dense + j] * out.dense[dbase + j];
            }
            let p = 1.0 / (1.0 + (-logit as f64).exp());
            out.labels.push(if rng.random::<f64>() < p { 1.0 } else { 0.0 });
        }
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct Section {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    offset: usize,
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(flatten)]
    shape: Shape,
    sections: Vec<Section>,
}

/// Writes `rows` to `path` (atomically).
pub fn write(rows: &Rows, path: &Path) -> Result<(), BenchError> {
    let s = &rows.shape;
    let parts: [(&str, &str, Vec<usize>, Vec<u8>); 4] = [
        (
            "sparse",
            "int32",
            vec![s.rows, s.fields],
            rows.sparse.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "dense",
            "float32",
            vec![s.rows, s.dense],
            rows.dense.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "labels",
            "float32",
            vec![s.rows, s.tasks],
            rows.labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        (
            "domains",
            "int32",
            vec![s.rows],
            rows.domains.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    let mut sections = Vec::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in &parts {
        sections.push(Section {
            name: name.to_string(),
            dtype: dtype.to_string(),
            shape: shape.clone(),
            offset,
        });
        offset += bytes.len();
    }
    let header = serde_json::to_string(&Header {
        shape: s.clone(),
        sections,
    })
    .map_err(|e| BenchError::msg(format!("header: {e}")))?;
    mtrec_core::atomic::write_with(path, |tmp| {
        let fill = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            writeln!(f, "{MAGIC}")?;
            writeln!(f, "{header}")?;
            for (_, _, _, bytes) in &parts {
                f.write_all(bytes)?;
            }
            f.flush()
        };
        fill().map_err(|source| mtrec_core::Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

fn read_u32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u32>> {
    let mut buf = vec![0u8; n * 4];
    r.read_exact(&mut buf)?;
    Ok(buf
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_f32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<f32>> {
    Ok(read_u32s(r, n)?.into_iter().map(f32::from_bits).collect())
}

/// Reads a file written by [`write`].
pub fn read(path: &Path) -> Result<Rows, BenchError> {
    let bad = |m: String| BenchError::msg(format!("{}: {m}", path.display()));
    let mut r = BufReader::new(std::fs::File::open(path).map_err(|e| bad(e.to_string()))?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| bad(e.to_string()))?;
    if line.trim_end() != MAGIC {
        return Err(bad(format!("not a benchmark data file (expected `{MAGIC}`)")));
    }
    line.clear();
    r.read_line(&mut line).map_err(|e| bad(e.to_string()))?;
    let h: Header = serde_json::from_str(&line).map_err(|e| bad(format!("header: {e}")))?;
    let s = h.shape;
    let io = |e: std::io::Error| bad(format!("truncated: {e}"));
    let sparse = read_u32s(&mut r, s.rows * s.fields).map_err(io)?;
    let dense = read_f32s(&mut r, s.rows * s.dense).map_err(io)?;
    let labels = read_f32s(&mut r, s.rows * s.tasks).map_err(io)?;
    let domains = read_u32s(&mut r, s.rows).map_err(io)?;
    Ok(Rows {
        shape: s,
        sparse,
        dense,
        labels,
        domains,
    })
}

/// The task names of the benchmark data.
pub fn tasks(n: usize) -> Vec<TaskInfo> {
    (0..n)
        .map(|k| TaskInfo {
            name: format!("task{k}"),
            kind: TaskKind::Binary,
        })
        .collect()
}

/// The rows as an mtrec `Dataset`; with `domains`, the domain column too.
pub fn dataset(rows: Rows, domains: bool) -> Result<Dataset, BenchError> {
    let s = rows.shape;
    let dom = domains.then(|| DomainColumn {
        names: (0..s.domains).map(|d| format!("domain{d}")).collect(),
        ids: rows.domains,
    });
    Ok(Dataset::new(
        tasks(s.tasks),
        Some(SparseColumns {
            fields: (0..s.fields).map(|f| format!("c{f}")).collect(),
            vocab: vec![s.vocab; s.fields],
            ids: rows.sparse,
        }),
        Some(DenseColumns {
            names: (0..s.dense).map(|j| format!("x{j}")).collect(),
            values: rows.dense,
        }),
        rows.labels,
        vec![1.0; s.rows * s.tasks],
        dom,
    )?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_round_trips_through_the_file() {
        let shape = Shape {
            rows: 50,
            ..Shape::census_like(50, 3)
        };
        let a = generate(&shape).unwrap();
        assert_eq!(a, generate(&shape).unwrap());
        assert!(a.sparse.iter().all(|&i| (i as usize) < shape.vocab));
        assert!(a.domains.iter().all(|&d| (d as usize) < shape.domains));
        let dir = std::env::temp_dir().join(format!("mtrec-bench-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.bin");
        write(&a, &path).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        let ds = dataset(a, true).unwrap();
        assert_eq!(ds.rows(), 50);
        std::fs::remove_dir_all(&dir).ok();
    }
}
