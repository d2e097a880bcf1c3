//! The fixed workloads, each a model built through the architecture registry
//! exactly as `mtrec run` builds it, on its synthetic data:
//! - mmoe, ple, star: the census-like input layer (40 fields x 1000 ids x 16
//!   dims plus 10 dense features: 650 wide), two binary tasks;
//! - large-vocab, small-model: the same small MMoE on hashed-id data (2 id
//!   fields of 4,194,304 or 1,024 rows each, 8 fields of 50, 4 dense: 164
//!   wide), two binary tasks: what a vocabulary of millions costs.

use candle_core::Device;
use mtrec_core::{FeatureSpec, GraphEnv, Model, SparseFeature};

use crate::data::{self, Shape};
use crate::BenchError;

/// Embedding width of every field.
pub const EMBEDDING_DIM: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 8 experts 650 -> 256 -> 128, 2 softmax gates, towers 128 -> 64 -> 1.
    Mmoe,
    /// PLE, 2 levels of 2 task-specific + 2 shared experts (-> 256 -> 128),
    /// the same towers.
    Ple,
    /// STAR over 3 domains: partitioned norm, star layers 650 -> 256 -> 128,
    /// per task a star tower 128 -> 64 -> 1 plus the auxiliary network.
    Star,
    /// MMoE, 8 experts 164 -> 64 -> 32, towers 32 -> 16 -> 1, on `user_id`
    /// and `item_id` hashed into [`LARGE_VOCAB`] rows each.
    LargeVocab,
    /// The same model and rows with the ids hashed into [`SMALL_VOCAB`] rows.
    SmallModel,
}

/// Rows of each id table of `large-vocab`.
pub const LARGE_VOCAB: usize = 4_194_304;
/// Rows of each id table of `small-model`.
pub const SMALL_VOCAB: usize = 1_024;

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Mmoe,
        Workload::Ple,
        Workload::Star,
        Workload::LargeVocab,
        Workload::SmallModel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Mmoe => "mmoe",
            Workload::Ple => "ple",
            Workload::Star => "star",
            Workload::LargeVocab => "large-vocab",
            Workload::SmallModel => "small-model",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BenchError> {
        Self::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|w| w.name()).collect();
            BenchError::msg(format!(
                "unknown workload `{s}`; the workloads are: {}",
                names.join(", ")
            ))
        })
    }

    pub fn title(self) -> &'static str {
        match self {
            Workload::Mmoe => "census-like MMoE",
            Workload::Ple => "census-like PLE",
            Workload::Star => "census-like STAR (3 domains)",
            Workload::LargeVocab => "small MMoE, 2 id fields x 4,194,304 rows",
            Workload::SmallModel => "small MMoE, 2 id fields x 1,024 rows",
        }
    }

    /// Rows of the id tables for the hashed-ids workloads.
    pub fn id_buckets(self) -> Option<usize> {
        match self {
            Workload::LargeVocab => Some(LARGE_VOCAB),
            Workload::SmallModel => Some(SMALL_VOCAB),
            Workload::Mmoe | Workload::Ple | Workload::Star => None,
        }
    }

    /// Rows of the synthetic data when not given: 200,000 census-like,
    /// 180,000 hashed-id rows.
    pub fn default_rows(self) -> usize {
        if self.id_buckets().is_some() {
            180_000
        } else {
            200_000
        }
    }

    /// The shape of this workload's data.
    pub fn shape(self, rows: usize, seed: u64) -> Shape {
        match self.id_buckets() {
            Some(n) => Shape::hashed_ids(rows, seed, n),
            None => Shape::census_like(rows, seed),
        }
    }

    /// The default data file name (workloads of the same data share it).
    pub fn data_file(self, rows: usize, seed: u64) -> String {
        match self.id_buckets() {
            Some(n) => format!("hashed-ids-{n}-{rows}-{seed}.bin"),
            None => format!("census-like-{rows}-{seed}.bin"),
        }
    }

    /// Whether data of `shape` (rows and seed aside) is this workload's.
    pub fn check(self, shape: &Shape) -> Result<(), BenchError> {
        let want = self.shape(shape.rows, shape.seed);
        if *shape == want {
            return Ok(());
        }
        Err(BenchError::msg(format!(
            "the data file holds {:?} data with vocabularies {:?} and {} dense features, but workload `{}` needs {:?} data with vocabularies {:?} and {} dense features; leave out --data, or write its data with `mtrec-bench data --workload {}`",
            shape.generator,
            shape.vocabs,
            shape.dense,
            self.name(),
            want.generator,
            want.vocabs,
            want.dense,
            self.name()
        )))
    }

    /// Whether the model reads the rows' domain ids.
    pub fn uses_domains(self) -> bool {
        self == Workload::Star
    }

    /// The architecture and its `[model]` parameters.
    pub fn arch(self) -> (&'static str, toml::Table) {
        let mut t = toml::Table::new();
        let units = |v: &[i64]| toml::Value::Array(v.iter().map(|&u| toml::Value::Integer(u)).collect());
        match self {
            Workload::Mmoe => {
                t.insert("experts".into(), toml::Value::Integer(8));
                t.insert("expert_units".into(), units(&[256, 128]));
                t.insert("tower_units".into(), units(&[64]));
                ("mmoe", t)
            }
            Workload::Ple => {
                t.insert("levels".into(), toml::Value::Integer(2));
                t.insert("specific_experts".into(), toml::Value::Integer(2));
                t.insert("shared_experts".into(), toml::Value::Integer(2));
                t.insert("expert_units".into(), units(&[256, 128]));
                t.insert("tower_units".into(), units(&[64]));
                ("ple", t)
            }
            Workload::Star => {
                t.insert("units".into(), units(&[256, 128]));
                t.insert("tower_units".into(), units(&[64]));
                ("star", t)
            }
            Workload::LargeVocab | Workload::SmallModel => {
                t.insert("experts".into(), toml::Value::Integer(8));
                t.insert("expert_units".into(), units(&[64, 32]));
                t.insert("tower_units".into(), units(&[16]));
                ("mmoe", t)
            }
        }
    }
}

/// Keeps the plugins' registrations linked into the binary.
pub fn link() {
    mtrec_mmoe::link();
    mtrec_ple::link();
    mtrec_star::link();
}

/// The input layer of the benchmark data.
pub fn features(shape: &Shape) -> FeatureSpec {
    FeatureSpec {
        sparse: shape
            .field_names
            .iter()
            .zip(&shape.vocabs)
            .map(|(name, &vocab)| SparseFeature {
                name: name.clone(),
                vocab,
                dim: EMBEDDING_DIM,
            })
            .collect(),
        dense: (0..shape.dense).map(|j| format!("x{j}")).collect(),
        ..FeatureSpec::default()
    }
}

/// Builds the workload's model through the registry (seeded).
pub fn build(w: Workload, shape: &Shape, seed: u64) -> Result<Model, BenchError> {
    link();
    let features = features(shape);
    let tasks = data::tasks(shape.tasks);
    let domains = if w.uses_domains() { shape.domains } else { 0 };
    let env = GraphEnv {
        input_width: features.width(),
        tasks: tasks.clone(),
        domains,
        features: features.clone(),
    };
    let (arch, params) = w.arch();
    let graph = mtrec_core::registry::architecture(arch)?.expand(&params, &env)?;
    Ok(Model::build(&graph, &features, &tasks, domains, seed, &Device::Cpu)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_list_the_workloads() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
        }
        let e = Workload::parse("mmoe2").unwrap_err().to_string();
        assert!(e.contains("`mmoe2`") && e.contains("large-vocab, small-model"), "{e}");
    }

    #[test]
    fn data_of_another_workload_is_refused() {
        let small = Workload::SmallModel.shape(100, 1);
        assert!(Workload::SmallModel.check(&Workload::SmallModel.shape(7, 2)).is_ok());
        let e = Workload::LargeVocab.check(&small).unwrap_err().to_string();
        assert!(e.contains("large-vocab") && e.contains("1024"), "{e}");
        assert!(Workload::Mmoe.check(&small).is_err());
        assert!(Workload::Star.check(&Workload::Ple.shape(10, 1)).is_ok());
    }

    #[test]
    fn the_vocabulary_workloads_build_one_table_of_every_field() {
        let shape = Workload::SmallModel.shape(10, 1);
        let model = build(Workload::SmallModel, &shape, 1).unwrap();
        // Tables: 2 x 1024 + 8 x 50 rows of 16; the same network at any N.
        let tables = (2 * 1024 + 8 * 50) * EMBEDDING_DIM;
        let big = Workload::LargeVocab.shape(10, 1);
        let f = features(&big);
        assert_eq!(f.width(), 10 * EMBEDDING_DIM + 4);
        assert_eq!(f.sparse[1].name, "item_id");
        assert_eq!(f.sparse[1].vocab, LARGE_VOCAB);
        assert!(model.params().parameter_count() > tables);
    }
}
