//! Multi-process (data-parallel) training for apt-rs: the MPI backend of apt-flow's
//! [`Collective`] and rank discovery from the launchers users already have.
//!
//! ```no_run
//! use apt_dist::{join, Launch};
//!
//! # fn main() -> apt_flow::Result<()> {
//! let launch = Launch::from_env()?;          // mpirun, torchrun or srun — or started alone
//! let world = join(&launch)?;                // Rc<dyn Collective>: MPI, or a world of one
//! println!("rank {} of {} ({})", world.rank(), world.world_size(), world.backend());
//! // trainer.with_collective(world.clone()) — and every step trains on Shard::of(&*world)
//! # Ok(()) }
//! ```
//!
//! MPI is used for CPU tensors; an NCCL backend for CUDA tensors is not written yet, so a
//! `torchrun` launch is refused with a message saying so.

#![warn(missing_docs)]

pub mod launcher;
pub mod mpi_backend;

use std::rc::Rc;

pub use apt_flow::train::{Collective, Shard, SingleProcess};
use apt_flow::{FlowError, Result};
pub use launcher::{Launch, Launcher};
pub use mpi_backend::MpiCollective;

/// Joins the run `launch` describes: a world of one when started alone (or as the only rank),
/// MPI under `mpirun`/`mpiexec` or `srun --mpi=pmix`. Checks that MPI sees the world the
/// launcher announced.
pub fn join(launch: &Launch) -> Result<Rc<dyn Collective>> {
    if launch.world_size == 1 {
        return Ok(Rc::new(SingleProcess));
    }
    match launch.launcher {
        Launcher::Direct => Ok(Rc::new(SingleProcess)),
        Launcher::Torchrun => Err(FlowError::Collective(format!(
            "started by torchrun as rank {} of {}: torchrun runs need the NCCL backend, which \
             apt-rs does not have yet; on CPUs launch with `mpirun -np {} apt …`",
            launch.rank, launch.world_size, launch.world_size
        ))),
        Launcher::Mpi | Launcher::Slurm => {
            let mpi = MpiCollective::init()?;
            if (mpi.rank(), mpi.world_size()) != (launch.rank, launch.world_size) {
                return Err(FlowError::Collective(format!(
                    "the launcher says rank {} of {}, MPI sees rank {} of {}: under Slurm start \
                     the ranks with `srun --mpi=pmix` (or mpirun inside the allocation)",
                    launch.rank,
                    launch.world_size,
                    mpi.rank(),
                    mpi.world_size()
                )));
            }
            Ok(Rc::new(mpi))
        }
    }
}
