//! Multi-process (data-parallel) training for apt-rs: the MPI backend of apt-flow's
//! [`Collective`] and rank discovery from the launchers users already have.
//! The README's example shows the calls; docs/distributed.md how a run uses them.
//!
//! Under `torchrun` the ranks join through libtorch's c10d (a TCPStore rendezvous and a Gloo
//! process group for CPU tensors, or an NCCL group for CUDA tensors: [`c10d_backend`]); under
//! `mpirun` through MPI (CPU tensors).

#![warn(missing_docs)]

pub mod c10d_backend;
pub mod launcher;
pub mod mpi_backend;

use std::rc::Rc;

pub use apt_flow::train::{Collective, Shard, SingleProcess};
use apt_flow::{FlowError, Result};
pub use c10d_backend::{nccl_available, C10dCollective};
pub use launcher::{Launch, Launcher};
pub use mpi_backend::MpiCollective;
use tch::Device;

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// How long a c10d rank waits for the others at the rendezvous and in a collective, by
/// default (seconds; `[dist] timeout_s`).
pub const STORE_TIMEOUT_S: u32 = 300;

/// Joins the run `launch` describes for CPU tensors: a world of one when started alone (or as
/// the only rank), c10d's Gloo under `torchrun`, MPI under `mpirun`/`mpiexec` or
/// `srun --mpi=pmix`. Checks that MPI sees the world the launcher announced.
pub fn join(launch: &Launch) -> Result<Rc<dyn Collective>> {
    join_with(launch, "auto", STORE_TIMEOUT_S, Device::Cpu)
}

/// [`join`] with an explicit backend and the device the run trains on: `"auto"` (NCCL for a
/// CUDA device under torchrun or srun, Gloo for the CPU under torchrun, MPI under mpirun / srun
/// on CPUs),
/// `"gloo"` (torchrun, CPU), `"nccl"` (torchrun, CUDA: rank `LOCAL_RANK` uses `cuda:LOCAL_RANK`)
/// or `"mpi"` (mpirun / srun, CPU), and the seconds a c10d rank waits for the others. A
/// backend the launcher or the device cannot use is an error naming both.
pub fn join_with(
    launch: &Launch,
    backend: &str,
    timeout_s: u32,
    device: Device,
) -> Result<Rc<dyn Collective>> {
    // A world of one needs no backend, unless one is named under a launcher (e.g. an NCCL
    // group of one GPU under torchrun, to check it).
    if launch.world_size == 1 && (backend == "auto" || launch.launcher == Launcher::Direct) {
        return Ok(Rc::new(SingleProcess));
    }
    let cuda = device.is_cuda();
    let chosen = match (backend, launch.launcher, cuda) {
        ("auto", Launcher::Torchrun | Launcher::Slurm, true) => "nccl",
        ("auto", Launcher::Torchrun, false) => "gloo",
        ("auto", Launcher::Mpi | Launcher::Slurm, _) => "mpi",
        ("auto", Launcher::Direct, _) => return Ok(Rc::new(SingleProcess)),
        ("gloo" | "mpi" | "nccl", ..) => backend,
        (other, ..) => {
            return Err(FlowError::Collective(format!(
                "dist.backend {other:?} is none of \"auto\", \"gloo\", \"mpi\", \"nccl\""
            )))
        }
    };
    let launcher_fits = match chosen {
        "mpi" => matches!(launch.launcher, Launcher::Mpi | Launcher::Slurm),
        _ => matches!(launch.launcher, Launcher::Torchrun | Launcher::Slurm),
    };
    if !launcher_fits {
        return Err(FlowError::Collective(format!(
            "dist.backend is {backend:?} but this rank was started by {:?}: \"gloo\" and \
             \"nccl\" join through torchrun (or srun with MASTER_ADDR/MASTER_PORT), \"mpi\" \
             through mpirun or srun (or leave it \"auto\")",
            launch.launcher
        )));
    }
    match (chosen, cuda) {
        ("nccl", false) => {
            return Err(FlowError::Collective(
                "dist.backend is \"nccl\", which reduces CUDA tensors, but the run's device is \
                 the CPU: use \"gloo\" (or \"auto\") on CPUs, or set device = \"cuda\""
                    .into(),
            ))
        }
        ("gloo" | "mpi", true) => {
            return Err(FlowError::Collective(format!(
                "dist.backend {chosen:?} reduces CPU tensors, but the run's device is {device:?}: \
                 start the ranks with torchrun and use \"nccl\" (or \"auto\") on GPUs"
            )))
        }
        ("nccl", true) if !nccl_available() => {
            return Err(FlowError::Collective(
                "this build of apt has no NCCL: build it against a CUDA PyTorch with \
                 `cargo xtask setup` (which installs the CUDA headers NCCL needs)"
                    .into(),
            ))
        }
        _ => {}
    }
    if chosen == "mpi" {
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
        return Ok(Rc::new(mpi));
    }
    let (host, port) = launch.master.clone().ok_or_else(|| {
        FlowError::Collective(format!(
            "started by {:?} as rank {} of {} without MASTER_ADDR/MASTER_PORT, which the c10d \
             rendezvous needs (a Slurm script exports them: the first node's address and a free \
             port)",
            launch.launcher, launch.rank, launch.world_size
        ))
    })?;
    // torchrun's agent serves the store itself unless told otherwise.
    let agent_store =
        std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let (rank, world) = (launch.rank, launch.world_size);
    Ok(match chosen {
        "nccl" => Rc::new(C10dCollective::nccl(
            &host,
            port,
            rank,
            world,
            agent_store,
            timeout_s,
            launch.local_rank,
        )?),
        _ => Rc::new(C10dCollective::gloo(
            &host,
            port,
            rank,
            world,
            agent_store,
            timeout_s,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torchrun(world: usize) -> Launch {
        Launch {
            launcher: Launcher::Torchrun,
            rank: 0,
            world_size: world,
            local_rank: 0,
            master: None,
        }
    }

    fn refused(backend: &str, device: Device) -> String {
        match join_with(&torchrun(2), backend, 2, device) {
            Ok(_) => panic!("{backend} on {device:?} joined"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn backends_that_do_not_fit_the_device_are_refused_before_any_rendezvous() {
        let e = refused("nccl", Device::Cpu);
        assert!(e.contains("the run's device is the CPU"), "{e}");
        let e = refused("gloo", Device::Cuda(0));
        assert!(e.contains("reduces CPU tensors"), "{e}");
        let e = refused("mpi", Device::Cpu);
        assert!(e.contains("started by Torchrun"), "{e}");
        let e = refused("ucc", Device::Cpu);
        assert!(e.contains("none of"), "{e}");
        // Auto on a GPU under torchrun (or srun) is NCCL: here it gets as far as the missing
        // address, or says the build has none.
        let e = refused("auto", Device::Cuda(0));
        assert!(e.contains("MASTER_ADDR") || e.contains("no NCCL"), "{e}");
        let srun = Launch {
            launcher: Launcher::Slurm,
            ..torchrun(2)
        };
        let e = match join_with(&srun, "gloo", 2, Device::Cpu) {
            Ok(_) => panic!("gloo under srun without an address joined"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("Slurm") && e.contains("MASTER_ADDR"), "{e}");
        // One process needs no backend, unless it names one.
        assert!(join_with(&torchrun(1), "auto", 2, Device::Cpu).is_ok());
        let direct = Launch {
            launcher: Launcher::Direct,
            ..torchrun(1)
        };
        assert!(join_with(&direct, "nccl", 2, Device::Cpu).is_ok());
        assert!(join_with(&torchrun(1), "nccl", 2, Device::Cpu).is_err());
    }

    #[test]
    fn an_nccl_group_without_a_gpu_is_an_error_not_a_crash() {
        if !nccl_available() || tch::Cuda::is_available() {
            return;
        }
        let e = C10dCollective::nccl("127.0.0.1", 29517, 0, 1, false, 2, 0).unwrap_err();
        assert!(e.to_string().contains("could not join"), "{e}");
    }
}
