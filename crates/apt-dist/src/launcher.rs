//! Where this process sits in a multi-process run, read from the environment that the launchers
//! users already have set: `mpirun` (Open MPI's `OMPI_COMM_WORLD_*`, MPICH/Hydra's `PMI_*`),
//! `torchrun` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) and Slurm's
//! `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`). When several are present the most
//! specific wins: an MPI launcher inside a Slurm allocation, torchrun inside one, then Slurm.

use apt_flow::{FlowError, Result};

/// The program that started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Started directly: a world of one.
    Direct,
    /// `mpirun` / `mpiexec` (Open MPI or MPICH/Hydra).
    Mpi,
    /// `torchrun` (`torch.distributed.run`), e.g. `torchrun --no-python --nproc-per-node 8 apt …`.
    Torchrun,
    /// Slurm's `srun` without an MPI launcher.
    Slurm,
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Who started it.
    pub launcher: Launcher,
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the run.
    pub world_size: usize,
    /// Rank on this machine: the GPU it uses (`cuda:local_rank`).
    pub local_rank: usize,
    /// The c10d rendezvous address (`MASTER_ADDR`, `MASTER_PORT`) under torchrun, or under
    /// srun when the batch script exports it.
    pub master: Option<(String, u16)>,
}

impl Launch {
    /// A process started on its own.
    pub const DIRECT: Launch = Launch {
        launcher: Launcher::Direct,
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master: None,
    };

    /// Reads the launch from this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the launch from `var` (an environment lookup), checking every value.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let triple = |rank: &'static str, size: &'static str, local: &'static str| {
            var(rank)?;
            Some([rank, size, if var(local).is_some() { local } else { "" }])
        };
        let (launcher, [rank, size, local]) = if let Some(t) = triple(
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ) {
            (Launcher::Mpi, t)
        } else if let Some(t) = triple("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID") {
            (Launcher::Mpi, t)
        } else if let Some(t) = triple("RANK", "WORLD_SIZE", "LOCAL_RANK") {
            (Launcher::Torchrun, t)
        } else if let Some(t) = triple("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID") {
            (Launcher::Slurm, t)
        } else {
            return Ok(Self::DIRECT);
        };
        let number = |name: &str| -> Result<usize> {
            let value = var(name)
                .ok_or_else(|| FlowError::Collective(format!("{name} is not set but {rank} is")))?;
            value.trim().parse().map_err(|_| {
                FlowError::Collective(format!("{name}={value:?} is not a non-negative integer"))
            })
        };
        let (r, n) = (number(rank)?, number(size)?);
        let local_rank = if local.is_empty() { 0 } else { number(local)? };
        if n == 0 || r >= n {
            return Err(FlowError::Collective(format!(
                "{rank}={r} is not a rank of a world of {size}={n}"
            )));
        }
        let master = match (var("MASTER_ADDR"), var("MASTER_PORT")) {
            // torchrun sets them; a Slurm batch script exports them for a c10d rendezvous.
            (Some(addr), Some(port))
                if matches!(launcher, Launcher::Torchrun | Launcher::Slurm) =>
            {
                let port = port.trim().parse().map_err(|_| {
                    FlowError::Collective(format!("MASTER_PORT={port:?} is not a port number"))
                })?;
                Some((addr, port))
            }
            _ => None,
        };
        Ok(Self {
            launcher,
            rank: r,
            world_size: n,
            local_rank,
            master,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn each_launcher_is_read_from_its_own_variables() {
        assert_eq!(launch(&[]).unwrap(), Launch::DIRECT);
        let mpi = launch(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!(
            (mpi.launcher, mpi.rank, mpi.world_size, mpi.local_rank),
            (Launcher::Mpi, 1, 2, 1)
        );
        let hydra = launch(&[
            ("PMI_RANK", "3"),
            ("PMI_SIZE", "4"),
            ("MPI_LOCALRANKID", "0"),
        ])
        .unwrap();
        assert_eq!(
            (hydra.launcher, hydra.rank, hydra.local_rank),
            (Launcher::Mpi, 3, 0)
        );
        let torchrun = launch(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "5"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(torchrun.launcher, Launcher::Torchrun);
        assert_eq!(torchrun.master, Some(("node0".into(), 29500)));
        assert_eq!(torchrun.local_rank, 5);
        let slurm = launch(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
        ])
        .unwrap();
        assert_eq!(
            (
                slurm.launcher,
                slurm.rank,
                slurm.world_size,
                slurm.local_rank
            ),
            (Launcher::Slurm, 9, 16, 1)
        );
        assert_eq!(slurm.master, None);
        // A batch script that exports the rendezvous address: c10d can join through it.
        let slurm = launch(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(slurm.master, Some(("node0".into(), 29500)));
    }

    #[test]
    fn the_most_specific_launcher_wins() {
        // torchrun inside a Slurm allocation, mpirun inside one.
        let both = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
        ];
        assert_eq!(launch(&both).unwrap().launcher, Launcher::Torchrun);
        let mpi_in_slurm = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ];
        assert_eq!(launch(&mpi_in_slurm).unwrap().launcher, Launcher::Mpi);
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let err = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RANK=\"x\""), "{err}");
        let err = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("world of WORLD_SIZE=2"), "{err}");
        let err = launch(&[("SLURM_PROCID", "0")]).unwrap_err().to_string();
        assert!(err.contains("SLURM_NTASKS is not set"), "{err}");
        let err = launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "http"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("MASTER_PORT"), "{err}");
    }
}
