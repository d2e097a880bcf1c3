//! The optimizers of a model: dense [`Adam`] for its variables, a
//! row-sparse [`TableOptimizer`] for each embedding table.
//!
//! A training step hands [`Optimizer::step`] the gradient store of the
//! backward pass and the rows each table's lookups touched
//! (`mtrec_core::TouchedRows`): the store holds the gradient of those rows'
//! copy, never of a whole table, so nothing in a step is proportional to a
//! vocabulary.
//!
//! # Checkpoint (one safetensors file)
//! The dense Adam's keys (see [`adam`]) and, per table, its kind's state
//! under `sparse:{table}.{suffix}` (see [`table`]). `:` cannot occur in a
//! variable name (graph node ids are letters, digits, `_` and `-`), so the
//! two never collide. Table state is written straight from its buffers
//! (no copy of a table-sized state).

pub mod adam;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use mtrec_core::{Model, TouchedRows};

pub use adam::{Adam, AdamConfig, STEP_KEY};
pub use table::{TableOptimizer, TableOptimizerConfig};

use crate::error::{Result, TrainError};

/// Prefix of the table optimizers' checkpoint keys.
pub const SPARSE_PREFIX: &str = "sparse:";

/// Dense Adam over a model's variables and one row-sparse optimizer per
/// embedding table.
#[derive(Debug)]
pub struct Optimizer {
    dense: Adam,
    tables: Vec<TableOptimizer>,
}

impl Optimizer {
    /// The optimizers of `model`: Adam(W) with `dense` over its variables;
    /// for each of its tables `per_table`'s optimizer, else `default`.
    pub fn new(
        model: &Model,
        dense: AdamConfig,
        default: &TableOptimizerConfig,
        per_table: &BTreeMap<String, TableOptimizerConfig>,
    ) -> Result<Self> {
        Self::over(
            model.params().vars(),
            model.params().tables(),
            dense,
            default,
            per_table,
        )
    }

    /// [`Optimizer::new`] over named variables and tables. A name in
    /// `per_table` that is no table is an error listing the tables.
    pub fn over(
        vars: Vec<(String, Var)>,
        tables: Vec<(String, Var)>,
        dense: AdamConfig,
        default: &TableOptimizerConfig,
        per_table: &BTreeMap<String, TableOptimizerConfig>,
    ) -> Result<Self> {
        if let Some(unknown) = per_table.keys().find(|k| !tables.iter().any(|(n, _)| n == *k)) {
            let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
            return Err(TrainError::Config(format!(
                "[train] table_optimizers: the model has no embedding table `{unknown}`; its tables are: {}",
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        let tables = tables
            .into_iter()
            .map(|(name, var)| {
                let config = per_table.get(&name).unwrap_or(default);
                TableOptimizer::new(&name, var, config, dense.lr)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dense: Adam::new(vars, dense)?,
            tables,
        })
    }

    /// The dense variables' Adam.
    pub fn dense(&self) -> &Adam {
        &self.dense
    }

    /// The tables' optimizers, sorted by table name.
    pub fn tables(&self) -> &[TableOptimizer] {
        &self.tables
    }

    /// One update: every dense variable with a gradient in `grads`, then the
    /// touched rows of every table whose rows' copy has a gradient. Shapes
    /// and names are checked before anything changes.
    pub fn step(&mut self, grads: &GradStore, touched: &[TouchedRows]) -> Result<()> {
        let mut work = Vec::with_capacity(touched.len());
        for t in touched {
            let Some(grad) = grads.get(t.values.as_tensor()) else {
                continue; // read, but no loss depends on it
            };
            let i = self
                .tables
                .iter()
                .position(|o| o.name() == t.table)
                .ok_or_else(|| TrainError::Invalid(format!("no optimizer for embedding table `{}`", t.table)))?;
            if grad.dims() != t.values.dims() {
                return Err(TrainError::Invalid(format!(
                    "gradient of the touched rows of `{}` has shape {:?}, the rows {:?}",
                    t.table,
                    grad.dims(),
                    t.values.dims()
                )));
            }
            let grad = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            work.push((i, &t.rows, grad));
        }
        self.dense.step(grads)?;
        for (i, rows, grad) in work {
            self.tables[i].step(rows, &grad)?;
        }
        Ok(())
    }

    /// Writes the dense and the tables' state to `path` as one safetensors
    /// file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dense = self.dense.state_tensors()?;
        let mut dense_bytes: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::with_capacity(dense.len());
        for (name, t) in dense {
            let (dtype, bytes) = tensor_bytes(&t)?;
            dense_bytes.push((name, t.dims().to_vec(), dtype, bytes));
        }
        let parts: Vec<(String, table::StatePart<'_>)> = self
            .tables
            .iter()
            .flat_map(|o| {
                o.state_parts()
                    .into_iter()
                    .map(move |p| (format!("{SPARSE_PREFIX}{}.{}", o.name(), p.suffix), p))
            })
            .collect();
        let mut views: Vec<(String, Raw<'_>)> = Vec::with_capacity(dense_bytes.len() + parts.len());
        for (name, shape, dtype, bytes) in &dense_bytes {
            views.push((
                name.clone(),
                Raw {
                    dtype: *dtype,
                    shape: shape.clone(),
                    bytes: std::borrow::Cow::Borrowed(bytes),
                },
            ));
        }
        for (name, part) in &parts {
            let dtype = match part.data {
                table::StateData::F32(_) => safetensors::Dtype::F32,
                table::StateData::U32(_) => safetensors::Dtype::U32,
            };
            views.push((
                name.clone(),
                Raw {
                    dtype,
                    shape: part.shape.clone(),
                    bytes: part.data.bytes(),
                },
            ));
        }
        mtrec_core::atomic::write_with(path, |tmp| {
            safetensors::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), None, tmp)
                .map_err(|e| mtrec_core::Error::Input(format!("{}: {e}", tmp.display())))
        })?;
        Ok(())
    }

    /// Restores [`Optimizer::save`]'s file. Strict: the dense part as
    /// [`Adam::load`]; every table's keys for its configured kind with the
    /// table's shape, nothing else. On error nothing is changed.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::checkpoint(path, format!("not a safetensors file: {e}")))?;
        let bad = |message: String| TrainError::checkpoint(path, message);
        let mut dense = HashMap::new();
        for name in file.names() {
            if name.starts_with(SPARSE_PREFIX) {
                continue;
            }
            let view = file.tensor(name).map_err(|e| bad(format!("key `{name}`: {e}")))?;
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .map_err(|e| bad(format!("key `{name}`: {e}")))?;
            dense.insert(name.to_string(), t);
        }
        // Tables first into memory, checked, so that an error changes nothing.
        let mut restored = Vec::with_capacity(self.tables.len());
        let mut expected = std::collections::HashSet::new();
        for o in &self.tables {
            let mut f32s = Vec::new();
            let mut u32s = Vec::new();
            for &suffix in o.suffixes() {
                let key = format!("{SPARSE_PREFIX}{}.{suffix}", o.name());
                let view = file.tensor(&key).map_err(|_| {
                    bad(format!(
                        "missing key `{key}`: table `{}` is trained with `{}` here; the checkpoint was written with another embedding optimizer or model",
                        o.name(),
                        o.kind()
                    ))
                })?;
                let (rows, dim) = o.shape();
                let expected_shape = match suffix {
                    "mv" => vec![rows, 2, dim],
                    _ => vec![rows],
                };
                if view.shape() != expected_shape.as_slice() {
                    return Err(bad(format!(
                        "key `{key}` has shape {:?}, table `{}` needs {:?}",
                        view.shape(),
                        o.name(),
                        expected_shape
                    )));
                }
                match (suffix, view.dtype()) {
                    ("row_step", safetensors::Dtype::U32) => {
                        u32s.push((suffix, bytemuck::pod_collect_to_vec::<u8, u32>(view.data())))
                    }
                    (_, safetensors::Dtype::F32) if suffix != "row_step" => {
                        f32s.push((suffix, bytemuck::pod_collect_to_vec::<u8, f32>(view.data())))
                    }
                    (_, dtype) => return Err(bad(format!("key `{key}` has dtype {dtype:?}"))),
                }
                if cfg!(target_endian = "big") {
                    for (_, v) in &mut f32s {
                        v.iter_mut()
                            .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                    }
                    for (_, v) in &mut u32s {
                        v.iter_mut().for_each(|x| *x = u32::from_le(*x));
                    }
                }
                expected.insert(key);
            }
            restored.push((f32s, u32s));
        }
        if let Some(extra) = file
            .names()
            .into_iter()
            .find(|n| n.starts_with(SPARSE_PREFIX) && !expected.contains(*n))
        {
            return Err(bad(format!(
                "unexpected key `{extra}`: no such table, or the table is trained with another embedding optimizer here"
            )));
        }
        // Every table checked before any state changes (the dense Adam's
        // load is strict and atomic itself).
        for (o, (f32s, u32s)) in self.tables.iter().zip(&restored) {
            o.check_restore(f32s, u32s)
                .map_err(|m| bad(format!("table `{}`: {m}", o.name())))?;
        }
        self.dense.load_state_tensors(&dense, path)?;
        for (o, (f32s, u32s)) in self.tables.iter_mut().zip(restored) {
            o.restore(f32s, u32s);
        }
        Ok(())
    }
}

/// A tensor's little-endian bytes and safetensors dtype (the dense state:
/// small, so copied).
fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (
            safetensors::Dtype::F32,
            t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        DType::F64 => (
            safetensors::Dtype::F64,
            t.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        DType::I64 => (
            safetensors::Dtype::I64,
            t.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        other => {
            return Err(TrainError::Invalid(format!(
                "cannot save optimizer state of dtype {other:?}"
            )))
        }
    })
}

/// Bytes to hand safetensors' writer.
struct Raw<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl safetensors::View for &Raw<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtrec_core::TouchedRows;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn setup(kind: &TableOptimizerConfig) -> (Optimizer, Var, Var) {
        let mut rng = StdRng::seed_from_u64(9);
        let w: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
        let t: Vec<f32> = (0..20 * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Var::from_vec(w, 4, &Device::Cpu).unwrap();
        let t = Var::from_vec(t, (20, 2), &Device::Cpu).unwrap();
        let opt = Optimizer::over(
            vec![("w".into(), w.clone())],
            vec![("emb".into(), t.clone())],
            AdamConfig::default(),
            kind,
            &BTreeMap::new(),
        )
        .unwrap();
        (opt, w, t)
    }

    /// A step on a few random rows of `emb` and on `w`.
    fn step(opt: &mut Optimizer, w: &Var, t: &Var, rng: &mut StdRng) {
        let mut rows: Vec<u32> = (0..5).map(|_| rng.random_range(0..20)).collect();
        rows.sort_unstable();
        rows.dedup();
        let index = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
        let values = Var::from_tensor(&t.as_detached_tensor().index_select(&index, 0).unwrap()).unwrap();
        let gw: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
        let gt: Vec<f32> = (0..rows.len() * 2).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut store = GradStore::default();
        store.insert(w.as_tensor(), Tensor::from_vec(gw, 4, &Device::Cpu).unwrap());
        store.insert(
            values.as_tensor(),
            Tensor::from_vec(gt, (rows.len(), 2), &Device::Cpu).unwrap(),
        );
        let touched = [TouchedRows {
            table: "emb".into(),
            rows,
            values,
        }];
        opt.step(&store, &touched).unwrap();
    }

    fn bits(v: &Var) -> Vec<u32> {
        let v = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mtrec-optim-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("opt.safetensors")
    }

    #[test]
    fn save_load_continues_bit_identically_for_every_table_kind() {
        let kinds = [
            TableOptimizerConfig::default(),
            TableOptimizerConfig::RowwiseAdagrad {
                lr: None,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            TableOptimizerConfig::Sgd {
                lr: None,
                weight_decay: 0.0,
            },
        ];
        for kind in kinds {
            let path = tmp(kind.name());
            let (mut a, wa, ta) = setup(&kind);
            let mut rng = StdRng::seed_from_u64(1);
            for _ in 0..7 {
                step(&mut a, &wa, &ta, &mut rng);
            }
            a.save(&path).unwrap();
            // A fresh optimizer over copies of the weights at this point.
            let (mut b, wb, tb) = setup(&kind);
            wb.set(wa.as_tensor()).unwrap();
            tb.set(ta.as_tensor()).unwrap();
            b.load(&path).unwrap();
            let mut rng_b = rng.clone();
            for _ in 0..7 {
                step(&mut a, &wa, &ta, &mut rng);
                step(&mut b, &wb, &tb, &mut rng_b);
            }
            assert_eq!(bits(&wa), bits(&wb), "{}", kind.name());
            assert_eq!(bits(&ta), bits(&tb), "{}", kind.name());
            std::fs::remove_dir_all(path.parent().unwrap()).ok();
        }
    }

    #[test]
    fn loading_another_table_optimizer_kind_is_an_error_that_changes_nothing() {
        let path = tmp("kinds");
        let (mut a, wa, ta) = setup(&TableOptimizerConfig::default());
        step(&mut a, &wa, &ta, &mut StdRng::seed_from_u64(2));
        a.save(&path).unwrap();
        let adagrad = TableOptimizerConfig::RowwiseAdagrad {
            lr: None,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let (mut b, _, _) = setup(&adagrad);
        let e = b.load(&path).unwrap_err().to_string();
        assert!(e.contains("sparse:emb.acc") && e.contains("rowwise-adagrad"), "{e}");
        assert_eq!(b.dense().step_count(), 0, "the dense state was not loaded either");
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }

    #[test]
    fn unknown_table_in_per_table_config_lists_the_tables() {
        let t = Var::from_vec(vec![0f32; 4], (2, 2), &Device::Cpu).unwrap();
        let per = BTreeMap::from([("emb2".to_string(), TableOptimizerConfig::default())]);
        let e = Optimizer::over(
            Vec::new(),
            vec![("emb".into(), t)],
            AdamConfig::default(),
            &TableOptimizerConfig::default(),
            &per,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`emb2`") && e.contains("emb"), "{e}");
    }
}
