//! Resumable training: after every epoch the weights, the optimizer state,
//! the best epoch's weights and the history are saved, so that a killed run
//! continues from its last finished epoch and ends as an uninterrupted run
//! would (batch order is a function of seed and epoch).
//!
//! Layout of the checkpoint folder: `epoch-NNNN.{weights,optimizer,best}.safetensors`,
//! `epoch-NNNN.balancer.safetensors` for a loss balancer with learned state
//! (uncertainty, GradNorm), and `state.json`, written last and atomically,
//! naming the epoch whose files are complete and the balancer kind. A crash mid-save leaves `state.json` pointing at the
//! previous, complete epoch; files of older epochs are removed afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mtrec_core::Model;
use serde::{Deserialize, Serialize};

use crate::balance::Balancer;
use crate::error::{Result, TrainError};
use crate::optim::Optimizer;
use crate::trainer::EpochLog;

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// The last finished epoch (1-based).
    pub epoch: usize,
    pub best_epoch: usize,
    pub best_score: f64,
    pub history: Vec<EpochLog>,
    /// Training time of all sessions so far.
    pub train_seconds: f64,
    /// The loss balancer's kind (`fixed`, `uncertainty`, ...); absent in
    /// checkpoints written before balancer state was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<String>,
    /// Ranks of a distributed run (their number sets the global batch);
    /// absent: one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Resumed {
    pub state: TrainState,
    /// The best epoch's weights and buffers by name.
    pub best: Vec<(String, Tensor)>,
}

#[derive(Clone, Debug)]
pub struct Checkpointer {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpointer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, epoch: usize, what: &str) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:04}.{what}.safetensors"))
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Saves the end of `state.epoch`, the balancer's learned state with it.
    pub fn save(
        &self,
        model: &Model,
        opt: &Optimizer,
        balancer: &Balancer,
        best: &[(String, Tensor)],
        state: &TrainState,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let e = state.epoch;
        model.params().save(&self.file(e, "weights"))?;
        opt.save(self.file(e, "optimizer"))?;
        let best: HashMap<String, Tensor> = best.iter().cloned().collect();
        let best_path = self.file(e, "best");
        mtrec_core::atomic::write_with(&best_path, |tmp| {
            candle_core::safetensors::save(&best, tmp).map_err(mtrec_core::Error::from)
        })?;
        let learned = balancer.state_tensors()?;
        if !learned.is_empty() {
            mtrec_core::atomic::write_with(&self.file(e, "balancer"), |tmp| {
                candle_core::safetensors::save(&learned, tmp).map_err(mtrec_core::Error::from)
            })?;
        }
        let state = TrainState {
            balancer: Some(balancer.kind().to_string()),
            ..state.clone()
        };
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| TrainError::Invalid(format!("cannot encode state: {e}")))?;
        mtrec_core::atomic::write_bytes(&self.state_path(), &json)?;
        // Only now are older epochs' files garbage.
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(n) = name
                .strip_prefix("epoch-")
                .and_then(|r| r.get(..4))
                .and_then(|n| n.parse::<usize>().ok())
            {
                if n != e {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// The optimizer state of the last complete epoch (warm start: a
    /// trained run's moments and step counts), or `None` without a
    /// checkpoint here.
    pub fn last_optimizer(&self) -> Result<Option<PathBuf>> {
        let path = self.state_path();
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&path).map_err(io(&path))?;
        let state: TrainState = serde_json::from_slice(&text).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            message: format!("unreadable: {e}"),
        })?;
        Ok(Some(self.file(state.epoch, "optimizer")))
    }

    /// Whether a checkpoint exists here.
    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    /// Loads the last complete epoch into `model`, `opt` and `balancer`,
    /// returning the history and the best weights. Strict: a checkpoint
    /// written by another model or another balancer is an error naming the
    /// mismatch.
    pub fn load(&self, model: &Model, opt: &mut Optimizer, balancer: &mut Balancer) -> Result<Resumed> {
        let path = self.state_path();
        let bad = |message: String| TrainError::Checkpoint {
            path: path.clone(),
            message,
        };
        let text = std::fs::read(&path).map_err(io(&path))?;
        let state: TrainState = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("not a training state ({e}); remove the folder to start over")))?;
        if state.history.len() != state.epoch || state.best_epoch == 0 || state.best_epoch > state.epoch {
            return Err(bad(format!(
                "inconsistent: epoch {}, {} history entries, best epoch {}",
                state.epoch,
                state.history.len(),
                state.best_epoch
            )));
        }
        let kind = balancer.kind();
        let balancer_path = self.file(state.epoch, "balancer");
        let learned = if balancer_path.exists() {
            let bytes = std::fs::read(&balancer_path).map_err(io(&balancer_path))?;
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| TrainError::Checkpoint {
                path: balancer_path.clone(),
                message: format!("not a safetensors file: {e}"),
            })?
        } else {
            HashMap::new()
        };
        match state.balancer.as_deref() {
            Some(saved) if saved != kind => {
                return Err(bad(format!(
                    "written with balancer `{saved}`, the config has `{kind}`; resume with the run folder's own config.toml or start a new run"
                )))
            }
            // Written before balancer state was saved: only stateless kinds can continue exactly.
            None if !balancer.state_tensors()?.is_empty() => {
                return Err(bad(format!(
                    "holds no state of the `{kind}` balancer (written by an older mtrec); start the run again"
                )))
            }
            _ => {}
        }
        if learned.is_empty() && !balancer.state_tensors()?.is_empty() {
            return Err(TrainError::Checkpoint {
                path: balancer_path,
                message: format!("missing: the `{kind}` balancer's learned state; start the run again"),
            });
        }
        model.params().load(&self.file(state.epoch, "weights"))?;
        opt.load(self.file(state.epoch, "optimizer"))?;
        let best_path = self.file(state.epoch, "best");
        let best = candle_core::safetensors::load(&best_path, &Device::Cpu).map_err(|e| TrainError::Checkpoint {
            path: best_path.clone(),
            message: e.to_string(),
        })?;
        let mut best: Vec<(String, Tensor)> = best.into_iter().collect();
        best.sort_by(|a, b| a.0.cmp(&b.0));
        let known: std::collections::BTreeSet<String> = model.params().all().into_iter().map(|(n, _)| n).collect();
        if let Some((n, _)) = best.iter().find(|(n, _)| !known.contains(n)) {
            return Err(TrainError::Checkpoint {
                path: best_path,
                message: format!("holds `{n}`, which this model does not have"),
            });
        }
        // Last: the weights and optimizer loaded, the balancer joins them.
        balancer.load_state_tensors(&learned, &balancer_path)?;
        Ok(Resumed { state, best })
    }
}
