//! Ranks as threads of one process: the exchanges of a distributed run
//! without MPI, for tests (every rank's thread installs its member with
//! [`crate::install`] and runs the same code a rank of `mpirun` would).

use std::sync::{Arc, Barrier, Mutex, PoisonError};

use crate::{Collective, DistributedError, Result};

struct Shared {
    size: usize,
    barrier: Barrier,
    /// One slot per rank: the buffer it contributes to the current exchange.
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One rank of a group of threads. A rank that panics leaves the others
/// waiting at their next exchange: use it where a hang fails a test by
/// timeout, not in production.
#[derive(Clone)]
pub struct ThreadRank {
    shared: Arc<Shared>,
    rank: usize,
}

impl std::fmt::Debug for ThreadRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadRank({} of {})", self.rank, self.shared.size)
    }
}

impl ThreadRank {
    /// The `size` members of a new group, in rank order (hand one to each thread).
    pub fn group(size: usize) -> Vec<ThreadRank> {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size)
            .map(|rank| ThreadRank {
                shared: shared.clone(),
                rank,
            })
            .collect()
    }

    /// Runs `f` on `size` threads, each given its rank of a new group,
    /// and returns what each returned, in rank order (a panic on a thread
    /// is resumed here once every thread ended).
    pub fn run<T, F>(size: usize, f: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(ThreadRank) -> T + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let handles: Vec<_> = Self::group(size)
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    }

    /// Puts `mine` in this rank's slot, waits for every rank, returns every
    /// slot (rank order), and waits again so that no slot is overwritten
    /// by the next exchange before every rank has read this one.
    fn exchange(&self, mine: Vec<u8>) -> Result<Vec<Vec<u8>>> {
        let poisoned = |_: PoisonError<_>| DistributedError::Protocol("a rank's thread panicked".into());
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = mine;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().map_err(poisoned)?.clone();
        self.shared.barrier.wait();
        Ok(all)
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let all = self.exchange(bytemuck::cast_slice(buf).to_vec())?;
        // Summed in rank order on every rank: identical results everywhere.
        buf.iter_mut().for_each(|x| *x = 0.0);
        for bytes in &all {
            let theirs: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
            if theirs.len() != buf.len() {
                return Err(DistributedError::Protocol(format!(
                    "all_reduce_sum of {} values met one of {}",
                    buf.len(),
                    theirs.len()
                )));
            }
            for (x, y) in buf.iter_mut().zip(theirs) {
                *x += y;
            }
        }
        Ok(())
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.exchange(local.to_vec())
    }

    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        let all = self.exchange(if self.rank == root { buf.clone() } else { Vec::new() })?;
        *buf = all
            .into_iter()
            .nth(root)
            .ok_or_else(|| DistributedError::Protocol(format!("broadcast from rank {root} of {}", self.shared.size)))?;
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted the group (code {code})", self.rank)
    }

    fn backend(&self) -> &'static str {
        "threads"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sums_gathers_and_broadcasts_across_threads() {
        let results = ThreadRank::run(3, |c| {
            let r = c.rank() as f32;
            let mut buf = vec![r, 10.0 * r, 1.0];
            c.all_reduce_sum(&mut buf).unwrap();
            let gathered = c.all_gather(&vec![c.rank() as u8; c.rank()]).unwrap();
            let mut b = if c.rank() == 2 { b"root".to_vec() } else { Vec::new() };
            c.broadcast(2, &mut b).unwrap();
            crate::check_same(&c, "x", b"same").unwrap();
            let differs = crate::check_same(&c, "the config", &[u8::from(c.rank() == 1)]);
            (buf, gathered, b, differs.map_err(|e| e.to_string()))
        });
        for (buf, gathered, b, differs) in results {
            assert_eq!(buf, vec![3.0, 30.0, 3.0]);
            assert_eq!(gathered, vec![vec![], vec![1], vec![2, 2]]);
            assert_eq!(b, b"root");
            let e = differs.unwrap_err();
            assert!(e.contains("the config") && e.contains("rank 1"), "{e}");
        }
    }
}
