//! MPI's world communicator (Open MPI, MPICH, ...) through rsmpi.

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Count;

use crate::{Collective, DistributedError, Result};

/// Elements per MPI call: MPI counts are C ints.
const CHUNK: usize = 1 << 28;

/// The world communicator of a process started by an MPI launcher. MPI is
/// finalized when this is dropped (every rank must drop it, after its last
/// collective).
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Declared last: dropped (MPI_Finalize) after the communicator handle.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

/// Environment variables MPI launchers set in the processes they start
/// (Open MPI's mpirun, PMIx, MPICH/Hydra and Slurm's PMI, MVAPICH).
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"];

/// Open MPI's parameter for waiting ranks to yield their core.
const YIELD_VAR: &str = "OMPI_MCA_mpi_yield_when_idle";

impl Mpi {
    /// Whether this process was started by an MPI launcher.
    pub fn launched() -> bool {
        LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
    }

    /// Initialises MPI; `Ok(None)` when the process was not started by an
    /// MPI launcher (a plain one-process run: MPI is then not touched, as
    /// a singleton MPI_Init would start helper daemons for nothing).
    pub fn init() -> Result<Option<Self>> {
        if !Self::launched() {
            return Ok(None);
        }
        // Open MPI busy-polls while a rank waits in a collective: a waiting
        // rank then takes a whole core from whatever shares it (another
        // rank, the compute threads, other jobs), which was measured to make
        // 2 ranks on 2 loaded cores 3-19x slower than with yielding. Yield
        // unless the user chose (`--mca mpi_yield_when_idle 0` or the
        // variable) otherwise. Read by MPI_Init, set before it.
        if std::env::var_os(YIELD_VAR).is_none() {
            std::env::set_var(YIELD_VAR, "1");
        }
        let universe = mpi::initialize().ok_or_else(|| DistributedError::Init("MPI was already initialised".into()))?;
        let world = universe.world();
        let rank = usize::try_from(world.rank()).map_err(|_| DistributedError::Init("negative rank".into()))?;
        let size = usize::try_from(world.size()).map_err(|_| DistributedError::Init("bad world size".into()))?;
        Ok(Some(Self {
            world,
            rank,
            size,
            _universe: universe,
        }))
    }
}

fn count(n: usize, what: &str) -> Result<Count> {
    Count::try_from(n).map_err(|_| DistributedError::Protocol(format!("{what}: {n} elements exceed MPI's count range")))
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        // rsmpi has no MPI_IN_PLACE: each chunk is copied to a send buffer.
        let mut send = vec![0f32; buf.len().min(CHUNK)];
        for chunk in buf.chunks_mut(CHUNK) {
            let send = &mut send[..chunk.len()];
            send.copy_from_slice(chunk);
            self.world.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mine = count(local.len(), "all_gather")?;
        let mut counts = vec![0 as Count; self.size];
        self.world.all_gather_into(&mine, &mut counts[..]);
        let mut displs = Vec::with_capacity(self.size);
        let mut total = 0usize;
        for &c in &counts {
            displs.push(count(total, "all_gather")?);
            total += usize::try_from(c).map_err(|_| DistributedError::Protocol("negative count".into()))?;
        }
        count(total, "all_gather")?;
        let mut recv = vec![0u8; total];
        {
            let mut parts = PartitionMut::new(&mut recv[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut parts);
        }
        let mut out = Vec::with_capacity(self.size);
        let mut at = 0usize;
        for &c in &counts {
            let n = c as usize;
            out.push(recv[at..at + n].to_vec());
            at += n;
        }
        Ok(out)
    }

    fn broadcast(&self, root: usize, buf: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(count(root, "broadcast root")?);
        let mut len = buf.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len).map_err(|_| DistributedError::Protocol("broadcast length".into()))?;
        buf.resize(len, 0);
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}
