//! Checks an architecture author runs in tests: does training reach every
//! weight? A candle op without backward, a detached path or an unused weight
//! cuts gradients silently; one optimizer step then leaves some variable
//! unchanged.

use std::collections::BTreeMap;

use mtrec_core::Model;
use mtrec_data::Batch;

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
