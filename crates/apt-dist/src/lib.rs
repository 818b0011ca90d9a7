//! Multi-process (data-parallel) training for apt-rs: the MPI backend of apt-flow's
//! [`Collective`] and rank discovery from the launchers users already have.
//! The README's example shows the calls; docs/distributed.md how a run uses them.
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

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

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
