//! Collective operations for data-parallel training.
//!
//! A run on N processes ("ranks") trains one model: every rank computes the
//! gradients of its part of each global batch, the ranks sum them with the
//! operations of [`Collective`], and every rank applies the same update. The
//! trait is small on purpose (sums of f32 buffers, gathers of byte buffers,
//! broadcast, barrier, abort) so that another transport (NCCL for GPUs) can
//! be added beside MPI without touching the training loop.
//!
//! Implementations:
//! - [`Local`]: one process, every operation the identity; what every run
//!   uses unless the binary installs another (so nothing changes for
//!   single-process training, and no MPI is needed to build or test).
//! - `Mpi` (cargo feature `distributed`): MPI's world communicator through
//!   the `mpi` crate (rsmpi), for `mpirun -np N mtrec run ...`.
//! - [`ThreadRank`]: ranks as threads of one process, so that the training
//!   crate's tests run real multi-rank training without MPI.
//!
//! MPI's communicator is process-wide, and so is the collective a run uses:
//! the binary [`install`]s it on its main thread once, and the training
//! crate reaches it with [`current`] (the training loop and evaluation run on
//! that thread; no other thread calls a collective).

mod error;
mod local;
#[cfg(feature = "distributed")]
mod mpi_backend;
mod shard;
mod threads;

use std::cell::RefCell;
use std::rc::Rc;

pub use error::{DistributedError, Result};
pub use local::Local;
#[cfg(feature = "distributed")]
pub use mpi_backend::Mpi;
pub use shard::shard_range;
pub use threads::ThreadRank;

/// The operations data-parallel training needs, over a fixed group of ranks.
/// Every rank must call the same operations in the same order with buffers
/// of the agreed sizes (a rank that stops calling blocks the others until
/// the launcher ends the job, see [`Collective::abort`]).
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn size(&self) -> usize;

    /// Element-wise sum over all ranks, in place: every rank ends with the
    /// same sum.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;

    /// Every rank's buffer (of any length), in rank order.
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// `root`'s buffer on every rank (replacing theirs, any length).
    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Ends the whole job (every rank) with exit code `code`: what a rank
    /// that cannot go on calls, so that the others do not wait forever.
    fn abort(&self, code: i32) -> !;

    /// The transport's name (`local`, `mpi`).
    fn backend(&self) -> &'static str;

    /// Rank 0: the one that writes files and prints.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<dyn Collective>>> = const { RefCell::new(None) };
}

/// The collective installed on this thread, else one [`Local`] process.
pub fn current() -> Rc<dyn Collective> {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| Rc::new(Local))
}

/// Makes `collective` the one [`current`] returns on this thread until the
/// returned guard is dropped (then the previous one is back).
pub fn install(collective: Rc<dyn Collective>) -> Installed {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(collective));
    Installed { previous }
}

/// Keeps a collective installed; see [`install`].
pub struct Installed {
    previous: Option<Rc<dyn Collective>>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A 64-bit FNV-1a hash of `bytes`: the same value on every rank and
/// machine (std's hasher is not guaranteed stable across builds).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Checks that every rank holds the same `bytes` (compared through a
/// fingerprint, so only 8 bytes travel): the first rank whose value differs
/// from rank 0's is named in [`DistributedError::Mismatch`] with `what`.
pub fn check_same(collective: &dyn Collective, what: &str, bytes: &[u8]) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    let mine = fingerprint(bytes);
    let all = collective.all_gather(&mine.to_le_bytes())?;
    let value = |b: &[u8]| -> Result<u64> {
        let arr: [u8; 8] = b
            .try_into()
            .map_err(|_| DistributedError::Protocol(format!("{what}: a rank sent {} bytes, not 8", b.len())))?;
        Ok(u64::from_le_bytes(arr))
    };
    let root = value(&all[0])?;
    for (rank, b) in all.iter().enumerate().skip(1) {
        if value(b)? != root {
            return Err(DistributedError::Mismatch {
                what: what.to_string(),
                rank,
                size: collective.size(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn install_is_scoped_and_current_defaults_to_one_process() {
        assert_eq!(current().size(), 1);
        assert_eq!(current().backend(), "local");
        {
            let _g = install(Rc::new(Local));
            assert!(current().is_root());
        }
        assert_eq!(current().rank(), 0);
    }

    #[test]
    fn fingerprint_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fingerprint(b"ab"), fingerprint(b"ba"));
    }

    #[test]
    fn one_process_is_always_consistent() {
        check_same(&Local, "config", b"anything").unwrap();
    }
}
