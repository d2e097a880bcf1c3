//! Data-parallel runs: `mpirun -np N mtrec run --config ...` (cargo feature
//! `distributed`; see README "Training on several machines").
//!
//! Every rank runs the same command: it reads and preprocesses the data
//! itself (deterministically, then checked to match rank 0's), builds the
//! same model from the same seed, and trains on its part of every global
//! batch (`mtrec_train::TrainSource::epoch_shards`); gradients and
//! evaluation are exchanged through `mtrec_distributed`. Rank 0 alone
//! writes the run folder and prints; a resume reads rank 0's checkpoint on
//! every rank (one folder on a file system all ranks see).
//!
//! Failure: a rank whose run fails prints its error with its rank and calls
//! MPI_Abort, which ends every rank (the others would otherwise wait in
//! their next exchange forever); a rank that dies is reported by the
//! launcher (`mpirun noticed that process rank 1 ... exited on signal 9`),
//! which then ends the others.

#[cfg(feature = "distributed")]
use std::rc::Rc;

#[cfg(feature = "distributed")]
use mtrec_distributed::Collective;
use mtrec_distributed::{check_same, current};
use mtrec_train::TrainError;

use mtrec_data::Preprocessor;

use crate::config::RunConfig;
use crate::error::{Result, RunError};

/// The process's place in a distributed run; MPI is finalized when it is
/// dropped (end of `main`).
pub struct World {
    _installed: Option<mtrec_distributed::Installed>,
    #[cfg(feature = "distributed")]
    _mpi: Option<Rc<mtrec_distributed::Mpi>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = current();
        write!(f, "World(rank {} of {}, {})", c.rank(), c.size(), c.backend())
    }
}

/// Joins the MPI job this process was started in, if any (with the
/// `distributed` feature and an MPI launcher's environment); otherwise a
/// one-process run.
pub fn init() -> Result<World> {
    #[cfg(feature = "distributed")]
    {
        let mpi =
            mtrec_distributed::Mpi::init().map_err(|e| RunError::Train(TrainError::Distributed(e.to_string())))?;
        if let Some(mpi) = mpi {
            let mpi = Rc::new(mpi);
            let installed = mtrec_distributed::install(mpi.clone() as Rc<dyn Collective>);
            abort_on_panic(mpi.rank(), mpi.size());
            return Ok(World {
                _installed: Some(installed),
                _mpi: Some(mpi),
            });
        }
        Ok(World {
            _installed: None,
            _mpi: None,
        })
    }
    #[cfg(not(feature = "distributed"))]
    {
        if launched_by_mpi() {
            eprintln!(
                "warning: started by an MPI launcher, but this mtrec was built without the `distributed` \
                 feature: every process trains alone (build with `--features distributed`)"
            );
        }
        Ok(World { _installed: None })
    }
}

#[cfg(not(feature = "distributed"))]
fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// A panic on one rank (any thread) ends the job instead of leaving the
/// other ranks waiting.
#[cfg(feature = "distributed")]
fn abort_on_panic(rank: usize, size: usize) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("error: rank {rank} of {size} panicked; ending every rank");
        // MPI_Abort from whichever thread panicked: the job must end.
        #[allow(clippy::exit)]
        std::process::exit(101);
    }));
}

/// Whether this process writes files and prints (rank 0, or no MPI).
pub fn is_root() -> bool {
    current().is_root()
}

/// Ends the whole job when a rank of a distributed run fails: prints the
/// error with the rank, then aborts every rank. Returns (doing nothing)
/// in a one-process run.
pub fn abort_if_distributed(error: &dyn std::fmt::Display) {
    let c = current();
    if c.size() > 1 {
        eprintln!("error on rank {} of {}: {error}", c.rank(), c.size());
        c.abort(1);
    }
}

/// Only `mtrec run` trains across ranks; the other commands (compare,
/// reproduce, predict, ...) would run whole on every rank and write the
/// same files at once: refused under several ranks.
pub fn check_command_distributes(is_run: bool) -> Result<()> {
    let c = current();
    if c.size() > 1 && !is_run {
        return Err(RunError::Usage(format!(
            "only `mtrec run` trains across ranks; this command was started on {} ranks: run it without mpirun",
            c.size()
        )));
    }
    Ok(())
}

/// Errors naming the first rank whose resolved config or fitted
/// preprocessing differs from rank 0's (nothing is serialised in a
/// one-process run).
pub fn check_ranks_agree(resolved: &RunConfig, preprocessor: Option<&Preprocessor>) -> Result<()> {
    let c = current();
    if c.size() == 1 {
        return Ok(());
    }
    let agree = |what: &str, bytes: &[u8]| {
        check_same(c.as_ref(), what, bytes).map_err(|e| RunError::Train(TrainError::Distributed(e.to_string())))
    };
    let config = toml::to_string(resolved).map_err(|e| crate::error::encode("the config")(&e))?;
    agree(
        "the resolved config (config file, --set overrides, data paths)",
        config.as_bytes(),
    )?;
    let fitted = match preprocessor {
        Some(p) => serde_json::to_vec(p).map_err(|e| crate::error::encode("the preprocessing")(&e))?,
        None => Vec::new(),
    };
    agree(
        "the preprocessing fitted on the training rows (vocabularies, scaling)",
        &fitted,
    )
}

/// Called after every training batch by `mtrec run`; two diagnostics,
/// off unless their variable is set:
/// - `MTREC_STEP_LOSSES=FILE`: rank 0 writes each step's loss per task
///   (of the global batch) to FILE, one JSON array per line: what compares
///   a distributed run with one process step by step.
/// - `MTREC_TEST_KILL_RANK=R:K`: rank R kills itself (SIGKILL, no clean-up,
///   as a crashed machine) after its K-th batch; used only by
///   `crates/runner/tests/distributed.rs`.
pub fn batch_hook() -> Result<impl FnMut(&mtrec_train::BatchProgress)> {
    let target = std::env::var("MTREC_TEST_KILL_RANK").ok().and_then(|v| {
        let (r, k) = v.split_once(':')?;
        Some((r.parse::<usize>().ok()?, k.parse::<usize>().ok()?))
    });
    let mut steps = match std::env::var_os("MTREC_STEP_LOSSES").filter(|_| is_root()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let file = std::fs::File::create(&path).map_err(crate::error::io(&path))?;
            Some((std::io::BufWriter::new(file), path))
        }
        None => None,
    };
    let rank = current().rank();
    let mut batches = 0usize;
    Ok(move |b: &mtrec_train::BatchProgress| {
        use std::io::Write as _;
        batches += 1;
        if let Some((w, path)) = steps.as_mut() {
            let line = serde_json::to_string(&b.losses).unwrap_or_default();
            if writeln!(w, "{line}").and_then(|()| w.flush()).is_err() {
                eprintln!("warning: cannot write {}", path.display());
                steps = None;
            }
        }
        if target == Some((rank, batches)) {
            eprintln!("rank {rank}: killed by MTREC_TEST_KILL_RANK after {batches} batches");
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::process::abort();
        }
    })
}

/// `own` summed over the ranks (itself in a one-process run).
pub fn sum_over_ranks(own: usize) -> Result<usize> {
    let c = current();
    if c.size() == 1 {
        return Ok(own);
    }
    let all = c
        .all_gather(&(own as u64).to_le_bytes())
        .map_err(|e| RunError::Train(TrainError::Distributed(e.to_string())))?;
    all.iter()
        .map(|b| {
            <[u8; 8]>::try_from(b.as_slice())
                .map(|b| u64::from_le_bytes(b) as usize)
                .map_err(|_| RunError::Train(TrainError::Distributed("a rank sent a malformed row count".into())))
        })
        .sum()
}
