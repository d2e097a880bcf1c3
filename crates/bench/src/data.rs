//! The benchmark's synthetic rows, and the file both the Rust and the
//! PyTorch side read them from (identical data on both sides). Two generators:
//!
//! - "census-like" (mmoe, ple, star): 40 categorical fields (vocabulary 1000
//!   each, ids skewed towards small values as real categorical data is), 10
//!   dense features N(0, 1), a domain id in 0..3 (sizes 50/30/20%), and two
//!   binary labels drawn from a logistic model over hidden per-id effects, the
//!   dense features and the domain, so that training has something to learn.
//! - "hashed-ids" (large-vocab, small-model): 2 id fields (`user_id`,
//!   `item_id`) whose raw ids are drawn Zipf-like from large id spaces
//!   ([`USER_IDS`], [`ITEM_IDS`]) and hashed into `buckets` rows each, 8
//!   categorical fields of 50 values, 4 dense features, one domain; the labels
//!   follow hidden effects of the raw ids (not of the buckets), the categorical
//!   values and the dense features. The raw ids and labels depend only on the
//!   seed, so the files of two bucket counts hold the same rows.
//!
//! Both draw from one seeded `StdRng`.
//!
//! File format (little-endian), read by `bench/pytorch/bench.py`:
//! - line 1: `mtrec-bench-data 2` (version 1 files, census-like only, are
//!   still read);
//! - line 2: a JSON header: `generator` (`census-like` or `hashed-ids`),
//!   `rows`, `fields`, `vocabs` (one vocabulary per field, in table order),
//!   `field_names`, `dense`, `tasks`, `domains`, `seed`, for hashed-ids also
//!   `ids` (`{buckets, raw_ids, zipf}`, one raw id space and exponent per id
//!   field), and `sections`, each `{name, dtype, shape, offset}` with `offset`
//!   in bytes from the first byte after line 2 (version 1 had one `vocab`
//!   instead of `vocabs` and no `generator`, `field_names`, `ids`);
//! - the sections: `sparse` int32 `[rows, fields]`, `dense` float32
//!   `[rows, dense]`, `labels` float32 `[rows, tasks]`, `domains` int32 `[rows]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use mtrec_core::{TaskInfo, TaskKind};
use mtrec_data::{Dataset, DenseColumns, DomainColumn, SparseColumns};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Zipf};
use serde::{Deserialize, Serialize};

use crate::BenchError;

const MAGIC: &str = "mtrec-bench-data 2";
const MAGIC_V1: &str = "mtrec-bench-data 1";

/// Raw user ids of the hashed-ids generator, and their Zipf exponent.
pub const USER_IDS: u64 = 20_000_000;
pub const USER_ZIPF: f64 = 0.8;
/// Raw item ids of the hashed-ids generator, and their Zipf exponent.
pub const ITEM_IDS: u64 = 10_000_000;
pub const ITEM_ZIPF: f64 = 1.0;

/// Which generator wrote the rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    #[default]
    CensusLike,
    HashedIds,
}

/// The id fields of the hashed-ids generator: raw id spaces and Zipf
/// exponents (one per id field), and the rows each is hashed into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdFields {
    pub buckets: usize,
    pub raw_ids: Vec<u64>,
    pub zipf: Vec<f64>,
}

/// The shape of the benchmark data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub generator: Generator,
    pub rows: usize,
    /// One vocabulary per categorical field, in table order.
    pub vocabs: Vec<usize>,
    pub field_names: Vec<String>,
    pub dense: usize,
    pub tasks: usize,
    pub domains: usize,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<IdFields>,
}

impl Shape {
    /// The issue's census-like workload: 40 fields x 1000 ids, 10 dense
    /// features, 2 binary tasks, 3 domains.
    pub fn census_like(rows: usize, seed: u64) -> Self {
        Self {
            generator: Generator::CensusLike,
            rows,
            vocabs: vec![1000; 40],
            field_names: (0..40).map(|f| format!("c{f}")).collect(),
            dense: 10,
            tasks: 2,
            domains: 3,
            seed,
            ids: None,
        }
    }

    /// The vocabulary workloads: `user_id` and `item_id` hashed into
    /// `buckets` rows each, 8 fields of 50 values, 4 dense features, 2 binary
    /// tasks, one domain.
    pub fn hashed_ids(rows: usize, seed: u64, buckets: usize) -> Self {
        let small = 8;
        Self {
            generator: Generator::HashedIds,
            rows,
            vocabs: [vec![buckets; 2], vec![50; small]].concat(),
            field_names: ["user_id".to_string(), "item_id".to_string()]
                .into_iter()
                .chain((0..small).map(|f| format!("c{f}")))
                .collect(),
            dense: 4,
            tasks: 2,
            domains: 1,
            seed,
            ids: Some(IdFields {
                buckets,
                raw_ids: vec![USER_IDS, ITEM_IDS],
                zipf: vec![USER_ZIPF, ITEM_ZIPF],
            }),
        }
    }

    /// Categorical fields.
    pub fn fields(&self) -> usize {
        self.vocabs.len()
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

/// Where each field's ids start among one task's effects, and the effects
/// per task (the fields' vocabularies summed).
fn effect_offsets(vocabs: &[usize]) -> (Vec<usize>, usize) {
    let starts = vocabs
        .iter()
        .scan(0, |at, &v| {
            let s = *at;
            *at += v;
            Some(s)
        })
        .collect();
    (starts, vocabs.iter().sum())
}

/// The hidden effects of the labels, drawn in this order (the data files
/// depend on it): per task, per field and id (N(0, 0.15^2)); then per task,
/// per dense feature (N(0, 0.3^2)).
fn hidden_effects(
    rng: &mut StdRng,
    n01: &Normal<f64>,
    tasks: usize,
    per_task: usize,
    dense: usize,
) -> (Vec<f32>, Vec<f32>) {
    let effects = (0..tasks * per_task).map(|_| n01.sample(rng) as f32 * 0.15).collect();
    let slopes = (0..tasks * dense).map(|_| n01.sample(rng) as f32 * 0.3).collect();
    (effects, slopes)
}

fn normal(std: f64) -> Result<Normal<f64>, BenchError> {
    Normal::new(0.0, std).map_err(|e| BenchError::msg(format!("normal distribution: {e}")))
}

/// Draws the rows of `shape` from its seed.
pub fn generate(shape: &Shape) -> Result<Rows, BenchError> {
    match (shape.generator, &shape.ids) {
        (Generator::CensusLike, _) => census_like(shape),
        (Generator::HashedIds, Some(ids)) => hashed_ids(shape, ids),
        (Generator::HashedIds, None) => Err(BenchError::msg("hashed-ids data needs its `ids` (raw id spaces)")),
    }
}

fn census_like(shape: &Shape) -> Result<Rows, BenchError> {
    let Shape {
        rows,
        ref vocabs,
        dense,
        tasks,
        domains,
        seed,
        ..
    } = *shape;
    let fields = vocabs.len();
    let (starts, per_task) = effect_offsets(vocabs);
    let mut rng = StdRng::seed_from_u64(seed);
    let n01 = normal(1.0)?;
    let (effects, slopes) = hidden_effects(&mut rng, &n01, tasks, per_task, dense);
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
        for &vocab in vocabs {
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
                logit += effects[k * per_task + starts[f] + out.sparse[base + f] as usize];
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

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The row of raw id `raw` of id field `field` among `buckets` (the hashing
/// trick: a fixed hash per field, modulo the bucket count).
pub fn bucket(raw: u64, field: usize, buckets: usize) -> u32 {
    (mix64(raw ^ mix64(field as u64 + 1)) % buckets as u64) as u32
}

/// A hidden effect of raw id `raw` of id field `field` on task `task`: about
/// N(0, 1) (a centred sum of three uniforms), fixed by the seed, no table.
fn id_effect(seed: u64, task: usize, field: usize, raw: u64) -> f32 {
    let h = mix64(mix64(mix64(seed) ^ (task as u64) << 8 ^ field as u64) ^ raw);
    let u = |k: u32| ((h >> (k * 21)) & 0x1F_FFFF) as f32 / (1u32 << 21) as f32;
    (u(0) + u(1) + u(2) - 1.5) * 2.0
}

fn hashed_ids(shape: &Shape, ids: &IdFields) -> Result<Rows, BenchError> {
    let Shape {
        rows,
        ref vocabs,
        dense,
        tasks,
        seed,
        ..
    } = *shape;
    let fields = vocabs.len();
    let id_fields = ids.raw_ids.len();
    if ids.zipf.len() != id_fields || id_fields > fields || ids.buckets == 0 {
        return Err(BenchError::msg(format!(
            "hashed-ids data: {} raw id spaces, {} Zipf exponents, {fields} fields, {} buckets do not fit together",
            id_fields,
            ids.zipf.len(),
            ids.buckets
        )));
    }
    let zipfs = ids
        .raw_ids
        .iter()
        .zip(&ids.zipf)
        .map(|(&n, &s)| Zipf::new(n as f64, s).map_err(|e| BenchError::msg(format!("Zipf({n}, {s}): {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let small = &vocabs[id_fields..];
    let (starts, per_task) = effect_offsets(small);
    let mut rng = StdRng::seed_from_u64(seed);
    let n01 = normal(1.0)?;
    let (effects, slopes) = hidden_effects(&mut rng, &n01, tasks, per_task, dense);
    let mut out = Rows {
        shape: shape.clone(),
        sparse: Vec::with_capacity(rows * fields),
        dense: Vec::with_capacity(rows * dense),
        labels: Vec::with_capacity(rows * tasks),
        domains: vec![0; rows],
    };
    let mut raw = vec![0u64; id_fields];
    for _ in 0..rows {
        for (j, z) in zipfs.iter().enumerate() {
            // Rank 1 is the most frequent id; raw ids are the ranks less one.
            raw[j] = (z.sample(&mut rng) as u64).saturating_sub(1);
            out.sparse.push(bucket(raw[j], j, ids.buckets));
        }
        let base = out.sparse.len();
        for &vocab in small {
            let u: f64 = rng.random();
            out.sparse.push(((u * u * vocab as f64) as usize).min(vocab - 1) as u32);
        }
        let dbase = out.dense.len();
        for _ in 0..dense {
            out.dense.push(n01.sample(&mut rng) as f32);
        }
        for k in 0..tasks {
            let mut logit = -1.0;
            for (j, &r) in raw.iter().enumerate() {
                logit += 0.5 * id_effect(seed, k, j, r);
            }
            for (f, start) in starts.iter().enumerate() {
                logit += effects[k * per_task + start + out.sparse[base + f] as usize];
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
    /// The number of categorical fields (the length of `vocabs`), for readers.
    fields: usize,
    sections: Vec<Section>,
}

/// The header of a version-1 file (census-like data, one vocabulary).
#[derive(Deserialize)]
struct HeaderV1 {
    rows: usize,
    fields: usize,
    vocab: usize,
    dense: usize,
    tasks: usize,
    domains: usize,
    seed: u64,
}

impl From<HeaderV1> for Shape {
    fn from(h: HeaderV1) -> Self {
        Shape {
            vocabs: vec![h.vocab; h.fields],
            field_names: (0..h.fields).map(|f| format!("c{f}")).collect(),
            dense: h.dense,
            tasks: h.tasks,
            domains: h.domains,
            ..Shape::census_like(h.rows, h.seed)
        }
    }
}

/// Writes `rows` to `path` (atomically).
pub fn write(rows: &Rows, path: &Path) -> Result<(), BenchError> {
    let s = &rows.shape;
    let parts: [(&str, &str, Vec<usize>, Vec<u8>); 4] = [
        (
            "sparse",
            "int32",
            vec![s.rows, s.fields()],
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
        fields: s.fields(),
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
    let version = match line.trim_end() {
        MAGIC => 2,
        MAGIC_V1 => 1,
        _ => return Err(bad(format!("not a benchmark data file (expected `{MAGIC}`)"))),
    };
    line.clear();
    r.read_line(&mut line).map_err(|e| bad(e.to_string()))?;
    let header = |e: serde_json::Error| bad(format!("header: {e}"));
    let s: Shape = if version == 1 {
        serde_json::from_str::<HeaderV1>(&line).map_err(header)?.into()
    } else {
        let h: Header = serde_json::from_str(&line).map_err(header)?;
        if h.fields != h.shape.fields() || h.shape.field_names.len() != h.shape.fields() {
            return Err(bad(format!(
                "header: {} fields, but {} vocabularies and {} field names",
                h.fields,
                h.shape.fields(),
                h.shape.field_names.len()
            )));
        }
        h.shape
    };
    let io = |e: std::io::Error| bad(format!("truncated: {e}"));
    let sparse = read_u32s(&mut r, s.rows * s.fields()).map_err(io)?;
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
            fields: s.field_names.clone(),
            vocab: s.vocabs.clone(),
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

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mtrec-bench-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn seeded_and_round_trips_through_the_file() {
        let shape = Shape::census_like(50, 3);
        let a = generate(&shape).unwrap();
        assert_eq!(a, generate(&shape).unwrap());
        assert!(a.sparse.iter().all(|&i| i < 1000));
        assert!(a.domains.iter().all(|&d| (d as usize) < shape.domains));
        let dir = temp("census");
        let path = dir.join("d.bin");
        write(&a, &path).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        let ds = dataset(a, true).unwrap();
        assert_eq!(ds.rows(), 50);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hashed_ids_round_trip_and_keep_their_rows_across_bucket_counts() {
        let big = generate(&Shape::hashed_ids(300, 4, 1 << 22)).unwrap();
        let small = generate(&Shape::hashed_ids(300, 4, 1024)).unwrap();
        let fields = big.shape.fields();
        assert_eq!(fields, 10);
        for (r, (a, b)) in big.sparse.chunks(fields).zip(small.sparse.chunks(fields)).enumerate() {
            assert!(a[..2].iter().all(|&i| i < 1 << 22), "row {r}: {a:?}");
            assert!(b[..2].iter().all(|&i| i < 1024), "row {r}: {b:?}");
            // Same small fields: only the hashing of the ids differs.
            assert_eq!(a[2..], b[2..], "row {r}");
            assert!(a[2..].iter().all(|&i| i < 50));
        }
        assert_eq!(big.labels, small.labels);
        assert_eq!(big.dense, small.dense);
        // Skewed: the most frequent item id is far above a uniform draw's count.
        let mut counts = std::collections::HashMap::new();
        for row in big.sparse.chunks(fields) {
            *counts.entry(row[1]).or_insert(0usize) += 1;
        }
        assert!(counts.values().copied().max().unwrap() >= 5, "{counts:?}");
        // Both labels occur.
        assert!(big.labels.contains(&0.0) && big.labels.contains(&1.0));
        let dir = temp("ids");
        let path = dir.join("d.bin");
        write(&big, &path).unwrap();
        assert_eq!(read(&path).unwrap(), big);
        let ds = dataset(big, false).unwrap();
        assert_eq!(ds.rows(), 300);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_version_1_files() {
        let rows = generate(&Shape::census_like(20, 2)).unwrap();
        let dir = temp("v1");
        let path = dir.join("d.bin");
        write(&rows, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let body_at = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(1).unwrap().0 + 1;
        let v1 = r#"{"rows":20,"fields":40,"vocab":1000,"dense":10,"tasks":2,"domains":3,"seed":2,"sections":[]}"#;
        let mut old = format!("{MAGIC_V1}\n{v1}\n").into_bytes();
        old.extend_from_slice(&bytes[body_at..]);
        std::fs::write(&path, old).unwrap();
        assert_eq!(read(&path).unwrap(), rows);
        std::fs::write(&path, b"something else\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("not a benchmark data file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
