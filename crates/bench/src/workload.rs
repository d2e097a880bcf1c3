//! The fixed workloads: one input layer (40 fields x 1000 ids x 16 dims plus
//! 10 dense features: 650 wide), two binary tasks, and one of three models
//! built through the architecture registry, exactly as `mtrec run` builds them.

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
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Mmoe, Workload::Ple, Workload::Star];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Mmoe => "mmoe",
            Workload::Ple => "ple",
            Workload::Star => "star",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BenchError> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| BenchError::msg(format!("unknown workload `{s}`; the workloads are: mmoe, ple, star")))
    }

    pub fn title(self) -> &'static str {
        match self {
            Workload::Mmoe => "census-like MMoE",
            Workload::Ple => "census-like PLE",
            Workload::Star => "census-like STAR (3 domains)",
        }
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
        sparse: (0..shape.fields)
            .map(|f| SparseFeature {
                name: format!("c{f}"),
                vocab: shape.vocab,
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
