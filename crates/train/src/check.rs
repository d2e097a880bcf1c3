//! Checks an architecture author runs in tests: does training reach every
//! weight? A candle op without backward, a detached path or an unused weight
//! cuts gradients silently; one optimizer step then leaves some variable
//! unchanged.

use std::collections::BTreeMap;

use candle_core::Device;
use mtrec_core::components::experts::{MlpExpertsKind, MlpExpertsParams};
use mtrec_core::components::gate::{SoftmaxGateKind, SoftmaxGateParams};
use mtrec_core::components::tower::{MlpTowerKind, MlpTowerParams};
use mtrec_core::{GraphSpec, Model, NodeSpec, INPUT};
use mtrec_data::{Batch, Dataset};

use crate::balance::{Balancer, BalancerConfig};
use crate::error::Result;
use crate::trainer::{optimizer, TrainConfig};

/// Takes one optimizer step on `batch` (every task weighted 1) and returns
/// the names of the trainable variables and embedding tables that did not
/// change. Empty means every weight receives a gradient.
pub fn unchanged_after_one_step(model: &Model, batch: &Batch) -> Result<Vec<String>> {
    unchanged_after_one_step_with(model, batch, &BalancerConfig::Fixed)
}

/// [`unchanged_after_one_step`] under a given loss balancer.
pub fn unchanged_after_one_step_with(model: &Model, batch: &Batch, balancer: &BalancerConfig) -> Result<Vec<String>> {
    let snapshot = |m: &Model| -> Result<BTreeMap<String, Vec<f32>>> {
        m.params()
            .vars()
            .into_iter()
            .chain(m.params().tables())
            .map(|(n, v)| Ok((n, v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    };
    let before = snapshot(model)?;
    if before.is_empty() {
        return Err(crate::error::TrainError::Invalid(
            "the model has no trainable variable: nothing can be checked".into(),
        ));
    }
    let cfg = TrainConfig {
        balancer: balancer.clone(),
        ..TrainConfig::default()
    };
    let mut opt = optimizer(model, &cfg)?;
    let mut b = Balancer::new(model, &cfg)?;
    b.begin_epoch(1, &[]);
    b.step(model, &mut opt, batch, None)?;
    let after = snapshot(model)?;
    Ok(after
        .into_iter()
        .filter(|(name, a)| before.get(name).is_some_and(|b| a == b))
        .map(|(name, _)| name)
        .collect())
}

/// A small MMoE from the core's built-in kinds for `data` (3 experts of 8
/// units, one softmax gate and one tower per task, embeddings of width
/// `embedding_dim`), weights drawn from `seed`: the model of tests that
/// need a real multi-task model without a plugin.
pub fn small_mmoe(data: &Dataset, embedding_dim: usize, seed: u64) -> Result<Model> {
    let experts = MlpExpertsParams {
        count: 3,
        units: vec![8],
        ..Default::default()
    };
    let mut nodes = vec![NodeSpec::of("experts", &MlpExpertsKind, &experts).input(INPUT)];
    for t in &data.tasks {
        let gate = format!("gate-{}", t.name);
        nodes.push(
            NodeSpec::of(&gate, &SoftmaxGateKind, &SoftmaxGateParams::default())
                .input(INPUT)
                .experts(["experts"]),
        );
        nodes.push(
            NodeSpec::of(format!("tower-{}", t.name), &MlpTowerKind, &MlpTowerParams::default())
                .input(gate)
                .task(&t.name),
        );
    }
    let domains = data.domains.as_ref().map_or(0, |d| d.names.len());
    Ok(Model::build(
        &GraphSpec { nodes },
        &data.features(embedding_dim),
        &data.tasks,
        domains,
        seed,
        &Device::Cpu,
    )?)
}
