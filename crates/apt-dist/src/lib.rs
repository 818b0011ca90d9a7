//! Multi-process (data-parallel) training for apt-rs: the MPI backend of apt-flow's
//! [`Collective`] and rank discovery from the launchers users already have.
//! The README's example shows the calls; docs/distributed.md how a run uses them.
//!
//! Under `torchrun` the ranks join through libtorch's c10d (a TCPStore rendezvous and a Gloo
//! process group, [`c10d_backend`]); under `mpirun` through MPI. Both reduce CPU tensors; an
//! NCCL group for CUDA tensors is not written yet.

#![warn(missing_docs)]

pub mod c10d_backend;
pub mod launcher;
pub mod mpi_backend;

use std::rc::Rc;

pub use apt_flow::train::{Collective, Shard, SingleProcess};
use apt_flow::{FlowError, Result};
pub use c10d_backend::C10dCollective;
pub use launcher::{Launch, Launcher};
pub use mpi_backend::MpiCollective;

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// How long a c10d rank waits for the others at the rendezvous and in a collective, by
/// default (seconds; `[dist] timeout_s`).
pub const STORE_TIMEOUT_S: u32 = 300;

/// Joins the run `launch` describes: a world of one when started alone (or as the only rank),
/// c10d's Gloo under `torchrun` (CPU tensors), MPI under `mpirun`/`mpiexec` or
/// `srun --mpi=pmix`. Checks that MPI sees the world the
/// launcher announced.
pub fn join(launch: &Launch) -> Result<Rc<dyn Collective>> {
    join_with(launch, "auto", STORE_TIMEOUT_S)
}

/// [`join`] with an explicit backend: `"auto"` (by the launcher), `"gloo"` (torchrun only),
/// `"mpi"` (mpirun / srun only) or `"nccl"` (refused: not written yet), and the seconds a c10d
/// rank waits for the others. A backend the launcher cannot give is an error naming both.
pub fn join_with(launch: &Launch, backend: &str, timeout_s: u32) -> Result<Rc<dyn Collective>> {
    if launch.world_size == 1 {
        return Ok(Rc::new(SingleProcess));
    }
    let fits = match (backend, launch.launcher) {
        ("auto", _) => true,
        ("gloo", Launcher::Torchrun) => true,
        ("mpi", Launcher::Mpi | Launcher::Slurm) => true,
        ("nccl", _) => {
            return Err(FlowError::Collective(
                "dist.backend is \"nccl\", which apt-rs does not have yet (CUDA tensors): \
                 use \"gloo\" under torchrun or \"mpi\" under mpirun, on CPUs"
                    .into(),
            ))
        }
        ("gloo" | "mpi", _) => false,
        (other, _) => {
            return Err(FlowError::Collective(format!(
                "dist.backend {other:?} is none of \"auto\", \"gloo\", \"mpi\", \"nccl\""
            )))
        }
    };
    if !fits {
        return Err(FlowError::Collective(format!(
            "dist.backend is {backend:?} but this rank was started by {:?}: \"gloo\" joins \
             through torchrun, \"mpi\" through mpirun or srun (or leave it \"auto\")",
            launch.launcher
        )));
    }
    match launch.launcher {
        Launcher::Direct => Ok(Rc::new(SingleProcess)),
        Launcher::Torchrun => {
            let (host, port) = launch.master.clone().ok_or_else(|| {
                FlowError::Collective(format!(
                    "started by torchrun as rank {} of {} without MASTER_ADDR/MASTER_PORT",
                    launch.rank, launch.world_size
                ))
            })?;
            // torchrun's agent serves the store itself unless told otherwise.
            let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE")
                .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
            Ok(Rc::new(C10dCollective::gloo(
                &host,
                port,
                launch.rank,
                launch.world_size,
                agent_store,
                timeout_s,
            )?))
        }
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
