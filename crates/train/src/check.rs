//! Checks an architecture author runs in tests: does training reach every
//! weight? A candle op without backward, a detached path or an unused weight
//! cuts gradients silently; one optimizer step then leaves some variable
//! unchanged.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use mtrec_core::components::experts::{MlpExpertsKind, MlpExpertsParams};
use mtrec_core::components::gate::{SoftmaxGateKind, SoftmaxGateParams};
use mtrec_core::components::tower::{MlpTowerKind, MlpTowerParams};
use mtrec_core::{GraphSpec, Model, NodeSpec, INPUT};
use mtrec_data::{Batch, Dataset};

use crate::balance::{Balancer, BalancerConfig};
use crate::error::Result;
use crate::trainer::{optimizer, TrainConfig};

/// Takes one optimizer step on `batch` (every task weighted 1) and returns
/// what did not change: the names of trainable variables and embedding
/// tables left whole, and `name[i]` for a part of one left unchanged while
/// the rest moved. Empty means every weight receives a gradient.
///
/// The parts checked are those a bug can cut off alone: each slice along
/// the first axis of a variable of three or more axes (one expert of a
/// bank `[n, in, out]`, one domain's `[D, in, out]` weights; the batch must
/// hold every domain). Table rows are not checked one by one: a row read
/// only through ReLUs that are off for its rows rightly gets no gradient.
pub fn unchanged_after_one_step(model: &Model, batch: &Batch) -> Result<Vec<String>> {
    unchanged_after_one_step_with(model, batch, &BalancerConfig::Fixed)
}

/// [`unchanged_after_one_step`] under a given loss balancer.
pub fn unchanged_after_one_step_with(model: &Model, batch: &Batch, balancer: &BalancerConfig) -> Result<Vec<String>> {
    let snapshot = |m: &Model| -> Result<BTreeMap<String, Tensor>> {
        m.params()
            .vars()
            .into_iter()
            .chain(m.params().tables())
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
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
    let mut unchanged = Vec::new();
    for (name, a) in &after {
        let Some(b) = before.get(name) else { continue };
        if same(a, b)? {
            unchanged.push(name.clone());
            continue;
        }
        let parts = if a.rank() >= 3 { a.dim(0)? } else { 0 };
        for i in 0..parts {
            if same(&a.get(i)?, &b.get(i)?)? {
                unchanged.push(format!("{name}[{i}]"));
            }
        }
    }
    Ok(unchanged)
}

fn same(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
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
