//! The model's weights, each written once as an initializer under its
//! mtrec parameter name (the safetensors key) when the graph first uses it.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::Tensor;

use crate::builder::Builder;
use crate::error::{ExportError, Result};

pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    written: BTreeSet<String>,
}

impl Weights {
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Self {
        Self {
            tensors,
            written: BTreeSet::new(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The weight `name`'s values.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| ExportError::MissingWeight(name.to_string()))
    }

    /// The weight `name` as a graph value (an initializer, written once).
    pub fn use_weight(&mut self, b: &mut Builder, name: &str) -> Result<String> {
        if !self.written.contains(name) {
            let t = self.get(name)?.clone();
            b.weight(name, &t)?;
            self.written.insert(name.to_string());
        }
        Ok(name.to_string())
    }

    /// A tensor derived from the weights at export time (e.g. STAR's
    /// per-domain effective weights), written as initializer `name`.
    pub fn derived(&mut self, b: &mut Builder, name: &str, t: &Tensor) -> Result<String> {
        if !self.written.contains(name) {
            b.weight(name, t)?;
            self.written.insert(name.to_string());
        }
        Ok(name.to_string())
    }
}
