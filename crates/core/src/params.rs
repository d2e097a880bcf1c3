//! Named, seeded model parameters in a deterministic order.
//!
//! candle's `VarMap` iterates in hash order and candle's CPU device cannot be
//! seeded, so runs would not be reproducible with it. Here every initial value
//! is drawn from one seeded `StdRng`, in the order the model asks for them, and
//! variables are kept sorted by name. Names are the safetensors keys of a
//! checkpoint: treat them as a stable format. Asking for a name twice is an
//! error, never a silent weight share.
//!
//! Embedding tables are a third kind, beside trainable variables and
//! buffers: trainable, but row-sparse. They never enter candle's autograd
//! graph whole: a training pass reads the rows its batch touches into a
//! small variable (`crate::features`), and the trainer updates just those
//! rows. [`ParamStore::vars`] therefore lists the dense variables only, so
//! that nothing on the training path (dense optimizer, clipping, the
//! balancers) does work proportional to a table.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Uniform {
        lo: f64,
        hi: f64,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, PyTorch's default for `nn.Linear`
    /// weights and biases, so that results compare with the PyTorch peers.
    FanIn(usize),
}

#[derive(Default)]
struct Inner {
    /// Trainable parameters.
    vars: BTreeMap<String, Var>,
    /// State that is saved but not trained (e.g. moving averages).
    buffers: BTreeMap<String, Var>,
    /// Row-sparse trainable embedding tables `[rows, dim]`.
    tables: BTreeMap<String, Var>,
}

/// All parameters of one model.
#[derive(Clone, Default)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("ParamStore")
            .field("vars", &g.vars.len())
            .field("buffers", &g.buffers.len())
            .field("tables", &g.tables.len())
            .finish()
    }
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it;
        // the maps themselves are always left consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Dense trainable variables (embedding tables excluded: see
    /// [`ParamStore::tables`]), sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock().vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Row-sparse embedding tables `[rows, dim]`, sorted by name: trained
    /// through the rows a batch touches (`crate::TouchedRows`).
    pub fn tables(&self) -> Vec<(String, Var)> {
        self.lock().tables.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every variable, table and buffer, sorted by name: the weights a
    /// checkpoint or a best-epoch snapshot holds.
    pub fn all(&self) -> Vec<(String, Var)> {
        let g = self.lock();
        let mut all: Vec<(String, Var)> = g
            .vars
            .iter()
            .chain(g.tables.iter())
            .chain(g.buffers.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Non-trainable saved state, sorted by name.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.lock()
            .buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of trainable scalars (embedding tables included).
    pub fn parameter_count(&self) -> usize {
        let g = self.lock();
        g.vars.values().chain(g.tables.values()).map(|v| v.elem_count()).sum()
    }

    /// Every variable, table and buffer by name, as saved in a checkpoint.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.all()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    /// Writes every variable and buffer as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self.tensors().into_iter().collect();
        crate::atomic::write_with(path, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(Error::from)
        })
    }

    /// Loads a checkpoint into the already-built variables. Strict: a missing
    /// name, an extra name or a shape mismatch is an error naming it (candle's
    /// `VarMap::load` silently ignores extra names).
    pub fn load(&self, path: &Path) -> Result<()> {
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let loaded = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let g = self.lock();
        let all: BTreeMap<&String, &Var> = g.vars.iter().chain(g.tables.iter()).chain(g.buffers.iter()).collect();
        if let Some(extra) = loaded.keys().find(|k| !all.contains_key(k)) {
            return Err(bad(format!(
                "holds `{extra}`, which this model does not have: it was written by another model or config"
            )));
        }
        for (name, var) in &all {
            let t = loaded
                .get(*name)
                .ok_or_else(|| bad(format!("has no `{name}`: it was written by another model or config")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Which map of the store a new parameter joins.
#[derive(Clone, Copy)]
enum Kind {
    Var,
    Buffer,
    Table,
}

/// Hands out parameters under a name prefix, drawing initial values from a
/// seeded generator shared by the whole model.
#[derive(Clone)]
pub struct ParamBuilder {
    store: ParamStore,
    prefix: String,
    rng: Arc<Mutex<StdRng>>,
    device: Device,
}

impl std::fmt::Debug for ParamBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamBuilder").field("prefix", &self.prefix).finish()
    }
}

impl ParamBuilder {
    pub fn new(store: &ParamStore, seed: u64, device: &Device) -> Self {
        Self {
            store: store.clone(),
            prefix: String::new(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            device: device.clone(),
        }
    }

    /// A builder whose names are `prefix.<name>`.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let mut b = self.clone();
        b.prefix = self.path(name.as_ref());
        b
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub(crate) fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The initial values, drawn in order. Returned as a `Vec` so that the
    /// variable owns them without a copy (a table of millions of rows would
    /// otherwise exist twice while being built).
    fn draw(&self, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Uniform { lo, hi } => {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                (0..n).map(|_| rng.random_range(lo..hi) as f32).collect()
            }
            Init::FanIn(fan_in) => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
            Init::Normal { mean, std } => {
                let dist = Normal::new(mean, std)
                    .map_err(|e| Error::GraphWide(format!("initialiser N({mean}, {std}): {e}")))?;
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                (0..n).map(|_| dist.sample(&mut *rng) as f32).collect()
            }
        };
        Ok(values)
    }

    fn insert(&self, name: &str, shape: &[usize], init: Init, kind: Kind) -> Result<Var> {
        let path = self.path(name);
        let values = self.draw(shape, init)?;
        let mut g = self.store.lock();
        if g.vars.contains_key(&path) || g.buffers.contains_key(&path) || g.tables.contains_key(&path) {
            return Err(Error::graph(
                path,
                "parameter name used twice: two components share a prefix",
            ));
        }
        let var = Var::from_vec(values, shape, &self.device)?;
        let map = match kind {
            Kind::Var => &mut g.vars,
            Kind::Buffer => &mut g.buffers,
            Kind::Table => &mut g.tables,
        };
        map.insert(path, var.clone());
        Ok(var)
    }

    /// A new trainable parameter `prefix.name`.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        Ok(self.insert(name, shape, init, Kind::Var)?.as_tensor().clone())
    }

    /// A new saved, non-trainable buffer `prefix.name` (e.g. a moving average),
    /// returned as a `Var` so that the forward pass can update it.
    pub fn buffer(&self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        self.insert(name, shape, init, Kind::Buffer)
    }

    /// A new row-sparse embedding table `prefix.name` of shape `[rows, dim]`:
    /// trained only through the rows a batch reads (see [`ParamStore::tables`]).
    pub fn table(&self, name: &str, rows: usize, dim: usize, init: Init) -> Result<Var> {
        self.insert(name, &[rows, dim], init, Kind::Table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_sorted_names() {
        let a = ParamStore::new();
        let b = ParamStore::new();
        for s in [&a, &b] {
            let pb = ParamBuilder::new(s, 7, &Device::Cpu);
            pb.pp("z").get("w", &[3, 2], Init::FanIn(3)).unwrap();
            pb.pp("a").get("w", &[2], Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        }
        let names: Vec<_> = a.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.w", "z.w"]);
        for ((_, x), (_, y)) in a.vars().iter().zip(b.vars().iter()) {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(x, y);
        }
    }

    #[test]
    fn fan_in_bound_respected() {
        let s = ParamStore::new();
        let t = ParamBuilder::new(&s, 1, &Device::Cpu)
            .get("w", &[100, 4], Init::FanIn(16))
            .unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() <= 0.25));
        assert!(v.iter().any(|x| x.abs() > 0.2), "draws should fill the range");
    }

    #[test]
    fn duplicate_name_is_an_error() {
        let s = ParamStore::new();
        let pb = ParamBuilder::new(&s, 1, &Device::Cpu);
        pb.get("w", &[1], Init::Zeros).unwrap();
        let err = pb.get("w", &[1], Init::Zeros).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("twice"), "{err}");
    }

    #[test]
    fn save_load_round_trip_and_strictness() {
        let dir = std::env::temp_dir().join(format!("mtrec-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let s = ParamStore::new();
        let pb = ParamBuilder::new(&s, 1, &Device::Cpu);
        pb.get("w", &[2, 2], Init::Normal { mean: 0.0, std: 1.0 }).unwrap();
        pb.buffer("stat", &[2], Init::Ones).unwrap();
        s.save(&path).unwrap();
        let t = ParamStore::new();
        let pt = ParamBuilder::new(&t, 99, &Device::Cpu);
        pt.get("w", &[2, 2], Init::Zeros).unwrap();
        pt.buffer("stat", &[2], Init::Zeros).unwrap();
        t.load(&path).unwrap();
        assert_eq!(
            s.tensors()["w"].to_vec2::<f32>().unwrap(),
            t.tensors()["w"].to_vec2::<f32>().unwrap()
        );
        assert_eq!(t.tensors()["stat"].to_vec1::<f32>().unwrap(), [1.0, 1.0]);
        // A model without `stat`: the extra name is reported.
        let u = ParamStore::new();
        ParamBuilder::new(&u, 1, &Device::Cpu)
            .get("w", &[2, 2], Init::Zeros)
            .unwrap();
        let err = u.load(&path).unwrap_err().to_string();
        assert!(err.contains("`stat`"), "{err}");
        // Wrong shape.
        let v = ParamStore::new();
        let pv = ParamBuilder::new(&v, 1, &Device::Cpu);
        pv.get("w", &[4], Init::Zeros).unwrap();
        pv.buffer("stat", &[2], Init::Zeros).unwrap();
        let err = v.load(&path).unwrap_err().to_string();
        assert!(err.contains("`w` has shape [2, 2]"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
