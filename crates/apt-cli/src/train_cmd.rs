//! `apt train --config FILE [--stage pretrain|distill|consistency|apt|all] [--resume]
//! [--set key=value …] [--dry-run]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use apt_flow::train::MetricLine;
use apt_flow::Finish;
use apt_pipeline::report::table;
use apt_pipeline::stages::{run_all, run_stages, stage_steps, Outcome, Progress, StageRun};
use apt_pipeline::{planned_stages, OpenRun, RunConfig, Selection, Stage};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use crate::progress::{bar, stop_flag};
use crate::{dry_run, log_file};

/// A pipeline stage on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
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
    #[arg(long)]
    resume: bool,
    /// Override a config value, e.g. `--set pretrain.train.steps=100 --set device=cuda`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Print the resolved config, parameter counts and memory per step, then exit.
    #[arg(long)]
    dry_run: bool,
}

/// Progress bars and log lines for the stages.
struct Bars {
    config: RunConfig,
    bar: Option<ProgressBar>,
    pairs: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Progress for Bars {
    fn stage_start(&mut self, stage: Stage, steps: u64) {
        tracing::info!(stage = stage.name(), steps, "stage start");
        self.started = std::time::Instant::now();
        self.bar = Some(bar(steps, stage.name()));
    }

    fn update(&mut self, stage: Stage, m: &MetricLine) {
        let total = stage_steps(&self.config, stage);
        if let Some(b) = &self.bar {
            b.set_position(m.step);
            b.set_message(match stage {
                Stage::AptImage | Stage::Apt => format!(
                    "D(real) {:+.2} D(fake) {:+.2} aR1 {:.4} G {:.3}",
                    m.value("d_real"),
                    m.value("d_fake"),
                    m.value("ar1"),
                    m.value("g_loss")
                ),
                _ => format!("loss {:.4} lr {:.2e}", m.value("loss"), m.value("lr")),
            });
        }
        if m.step.is_multiple_of(50) || m.step == total {
            let values = serde_json::to_string(&m.values).unwrap_or_default();
            tracing::info!(stage = %m.stage, step = m.step, skipped = m.skipped, %values, "progress");
        }
    }

    fn pairs(&mut self, done: usize, total: usize) {
        let b = self.pairs.get_or_insert_with(|| bar(total as u64, "pairs"));
        b.set_position(done as u64);
        if done == total {
            b.finish_and_clear();
            self.pairs = None;
        }
    }

    fn stage_end(&mut self, stage: Stage, outcome: &Outcome) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(b) = self.pairs.take() {
            b.finish_and_clear();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let stopped = matches!(outcome, Outcome::Stopped);
        tracing::info!(stage = stage.name(), seconds, stopped, "stage end");
        if let Outcome::Completed(report) = outcome {
            let json = serde_json::to_value(report).unwrap_or_default();
            let bad = json["bad_samples"].as_array().map_or(0, Vec::len);
            if bad > 0 {
                tracing::warn!(
                    stage = stage.name(),
                    files = bad,
                    "bad samples were skipped (listed in the stage's report.json)"
                );
            }
            println!(
                "{} report ({seconds:.0} s):\n{}",
                stage.name(),
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }

    fn skipped(&mut self, stage: Stage) {
        println!("{}: finished earlier; skipping", stage.name());
    }

    fn evaluated(&mut self, done: usize, total: usize, name: &str) {
        let b = self
            .bar
            .get_or_insert_with(|| bar(total as u64, "evaluate"));
        b.set_position(done as u64);
        b.set_message(name.to_string());
        tracing::info!(done, total, model = name, "evaluated");
        if done == total {
            b.finish_and_clear();
            self.bar = None;
        }
    }
}

/// Runs the stage(s). Exit code 130 when interrupted (Ctrl-C / SIGTERM) after the current step
/// was finished and checkpointed.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let path = args.config.display().to_string();
    let config = RunConfig::load(&args.config, &args.overrides)
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
        dry_run::print(&config, &stages)?;
        return Ok(ExitCode::SUCCESS);
    }
    let explicit = args.stage != StageArg::All;
    // Every check passes before anything in the run directory changes.
    let open = OpenRun::for_training(config, &stages, args.resume)?;
    log_file::open(&open.dir.log_file())?;
    tracing::info!(config = %args.config.display(), out = %open.dir.root().display(), stage = ?args.stage, resume = args.resume, "apt train");
    let stop = stop_flag()?;
    let mut bars = Bars {
        config: open.config.clone(),
        bar: None,
        pairs: None,
        started: std::time::Instant::now(),
    };
    let mut ctx = StageRun {
        config: &open.config,
        dir: &open.dir,
        resume: args.resume,
        stop: stop.clone(),
        progress: &mut bars,
    };
    if !explicit {
        let Some((path, metrics)) = run_all(&mut ctx, &stages)? else {
            println!("stopped (training at a checkpoint, or the evaluation before writing anything); continue with --resume");
            return Ok(ExitCode::from(130));
        };
        if !metrics.models.is_empty() {
            print!("{}", table(&metrics.models));
        }
        println!("report      {}", path.display());
    } else if run_stages(&mut ctx, &stages, explicit)? == Finish::Stopped {
        println!("stopped at a checkpoint; continue with --resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
