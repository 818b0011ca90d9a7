//! `apt train --config FILE [--stage vae|pretrain|distill|consistency|apt|all]
//! [--resume | --continue | --fresh] [--set key=value …] [--dry-run [--world-size N]]`.
//!
//! Under `mpirun -np N` (or `srun --mpi=pmix`) the N processes train data-parallel: each
//! takes 1/N of every global batch, gradients are averaged over MPI, and rank 0 alone writes
//! the run directory, the log, the progress bars and the report (docs/distributed.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use apt_dist::Launch;
use apt_flow::RunEnd;
use apt_pipeline::report::table;
use apt_pipeline::run_all;
use apt_pipeline::stages::{run_stages, StageRun};
use apt_pipeline::{planned_stages, OpenRun, RunConfig, RunDir, Selection, Stage};
use clap::{Args, ValueEnum};

use crate::progress::{stop_flag, StageBars};
use crate::{dry_run, log_file};

/// A pipeline stage on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    /// Training the video VAE of a latent-space run (`[vae]`).
    Vae,
    /// Rectified-flow pre-training of the teacher.
    Pretrain,
    /// Deterministic distillation to one step (teacher ODE pairs).
    Distill,
    /// Consistency distillation to one step.
    Consistency,
    /// Adversarial post-training of the one-step generator (with its image stage, if any).
    Apt,
    /// Every configured stage in order, then the evaluation and `report.md`.
    All,
}

impl StageArg {
    fn selection(self) -> Selection {
        match self {
            StageArg::Vae => Selection::One(Stage::Vae),
            StageArg::Pretrain => Selection::One(Stage::Pretrain),
            StageArg::Distill => Selection::One(Stage::Distill),
            StageArg::Consistency => Selection::One(Stage::Consistency),
            StageArg::Apt => Selection::One(Stage::Apt),
            StageArg::All => Selection::All,
        }
    }
}

/// Arguments of `apt train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Which stage to run (`all`: every configured stage, then the report).
    #[arg(long, value_enum, default_value = "all")]
    stage: StageArg,
    /// Continue from the newest intact checkpoint (with `all`: finished stages are skipped).
    #[arg(long, conflicts_with_all = ["continue_run", "fresh"])]
    resume: bool,
    /// Continue the run in `out` as --resume does when it holds any checkpoint or export of
    /// the stages, else start it (what `cargo xtask train` passes).
    #[arg(long = "continue", conflicts_with = "fresh")]
    continue_run: bool,
    /// Start over: move an existing `out` aside to `<out>.old-<N>` first (saying so).
    #[arg(long)]
    fresh: bool,
    /// Override a config value, e.g. `--set pretrain.train.steps=100 --set device=cuda`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the resolved config, parameter counts and memory per step, then exit.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: also one rank's memory per step in a data-parallel run of N ranks, under
    /// each `shard` mode and the stage's own.
    #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..))]
    world_size: Option<u32>,
}

/// `--fresh`: moves a non-empty run directory to the first free `<dir>.old-<N>`, saying so.
fn move_aside(root: &Path) -> Result<()> {
    let holds_anything = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some());
    if !holds_anything {
        return Ok(());
    }
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let aside = (1..)
        .map(|n| root.with_file_name(format!("{name}.old-{n}")))
        .find(|p| !p.exists())
        .expect("a free name");
    std::fs::rename(root, &aside).with_context(|| {
        format!(
            "--fresh: cannot move {} aside to {}",
            root.display(),
            aside.display()
        )
    })?;
    eprintln!(
        "--fresh: moved the earlier run {} to {} (remove it when you no longer need it)",
        root.display(),
        aside.display()
    );
    Ok(())
}

/// Runs the stage(s). Exit code 130 when interrupted (Ctrl-C / SIGTERM) after the current step
/// was finished and checkpointed.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let path = args.config.display().to_string();
    let mut config = RunConfig::load(&args.config, &args.overrides)
        .map_err(anyhow::Error::new)
        // Errors about a key do not say which file; those about the file already do.
        .map_err(|e| {
            if e.to_string().contains(&path) {
                e
            } else {
                e.context(path.clone())
            }
        })?;
    let selection = args.stage.selection();
    let stages = planned_stages(&config, selection)?;
    if args.dry_run {
        dry_run::print(&config, &stages, args.world_size.unwrap_or(1) as usize)?;
        return Ok(ExitCode::SUCCESS);
    }
    let explicit = args.stage != StageArg::All;
    let launch = Launch::from_env()?;
    if launch.world_size > 1 && config.device()?.is_cuda() {
        // One GPU per rank: torchrun's LOCAL_RANK picks it.
        config.device = format!("cuda:{}", launch.local_rank);
    }
    let world = apt_dist::join_with(
        &launch,
        config.dist.backend.name(),
        config.dist.timeout_s,
        config.device()?,
    )?;
    // Every check passes before anything in the run directory changes. The command includes
    // the binary's fingerprint: ranks of different builds refuse like different arguments.
    // (Only ranks of a data-parallel run compare it: a single process skips the file read.)
    let binary = match world.world_size() {
        1 => String::new(),
        _ => binary_fingerprint(),
    };
    let command = format!(
        "{:?} binary {binary}",
        std::env::args().skip(1).collect::<Vec<_>>()
    );
    let dir = RunDir::new(&config.out);
    if args.fresh && world.is_main() {
        // The checks that do not depend on the directory refuse before the old run moves.
        config.model()?;
        apt_pipeline::preflight::check_run(&config, &stages)?;
        if !explicit {
            apt_pipeline::preflight::check_report(&config)?;
        }
        apt_pipeline::memory::check_fits(&config, &stages)?;
        move_aside(dir.root())?;
    }
    // Read before any rank changes the directory (rank 0 moves it aside only with --fresh).
    let mut args = args;
    args.resume = args.resume || (args.continue_run && stages.iter().any(|&s| dir.has_state(s)));
    let open = OpenRun::for_training_in(&*world, config, &stages, args.resume, explicit, &command)?;
    let main = world.is_main();
    let result = train(&args, &open, &stages, &world, &launch);
    if result.is_err() && main && open.discard_if_untouched() {
        eprintln!(
            "(removed {}: this command created it and nothing was trained in it)",
            open.dir.root().display()
        );
    }
    result
}

/// The running executable's size and a hash of its first and last MiB: different builds of
/// `apt` differ in it (cheap enough to take at every start; "unknown" when unreadable).
fn binary_fingerprint() -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open("/proc/self/exe")?;
        let len = file.metadata()?.len();
        let mut head = vec![0u8; len.min(1 << 20) as usize];
        file.read_exact(&mut head)?;
        let mut tail = vec![0u8; len.min(1 << 20) as usize];
        file.seek(SeekFrom::Start(len - tail.len() as u64))?;
        file.read_exact(&mut tail)?;
        let hash = head
            .iter()
            .chain(&tail)
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        Ok(format!("{len}:{hash:016x}"))
    };
    read().unwrap_or_else(|_| "unknown".into())
}

/// Trains `stages` in the claimed run directory (every rank), then evaluates and reports
/// (rank 0, `--stage all`).
fn train(
    args: &TrainArgs,
    open: &OpenRun,
    stages: &[Stage],
    world: &std::rc::Rc<dyn apt_dist::Collective>,
    launch: &Launch,
) -> Result<ExitCode> {
    let explicit = args.stage != StageArg::All;
    let main = world.is_main();
    if main {
        log_file::open(&open.dir.log_file())?;
    }
    if world.world_size() > 1 && main {
        println!(
            "world       {} ranks ({} via {:?}), global batches split {}-ways",
            world.world_size(),
            world.backend(),
            launch.launcher,
            world.world_size()
        );
    }
    tracing::info!(config = %args.config.display(), out = %open.dir.root().display(), stage = ?args.stage, resume = args.resume, rank = world.rank(), world = world.world_size(), "apt train");
    let stop = stop_flag()?;
    let mut bars = StageBars::new(open.config.clone());
    let mut silent = ();
    let progress: &mut dyn apt_pipeline::stages::Progress =
        if main { &mut bars } else { &mut silent };
    let mut ctx = StageRun {
        config: &open.config,
        dir: &open.dir,
        resume: args.resume,
        stop: stop.clone(),
        progress,
        world: world.clone(),
    };
    if !main {
        // Train every stage; rank 0 evaluates and reports.
        return Ok(match run_stages(&mut ctx, stages, explicit)? {
            RunEnd::Stopped => ExitCode::from(130),
            RunEnd::Completed => ExitCode::SUCCESS,
        });
    }
    if !explicit {
        let Some((path, metrics)) = run_all(&mut ctx, stages)? else {
            println!(
                "stopped (a stage at its last checkpoint or between teacher-pair shards, or the \
                 evaluation before writing anything); continue with --resume"
            );
            return Ok(ExitCode::from(130));
        };
        if !metrics.models.is_empty() {
            print!("{}", table(&metrics.models));
        }
        println!("report      {}", path.display());
    } else if run_stages(&mut ctx, stages, explicit)? == RunEnd::Stopped {
        println!(
            "stopped (at the last checkpoint, or between teacher-pair shards); continue with \
             --resume"
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
