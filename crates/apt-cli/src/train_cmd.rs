//! `apt train --config FILE [--stage pretrain|distill|consistency|apt|all] [--resume]
//! [--set key=value …] [--dry-run]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use apt_flow::distill::{run_consistency, run_distill};
use apt_flow::pretrain::run_pretrain;
use apt_flow::trainer::{Finish, MetricLine};
use apt_flow::RunConfig;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{dry_run, log_file, report};

/// A pipeline stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Rectified-flow pre-training of the teacher.
    Pretrain,
    /// Deterministic distillation to one step (teacher ODE pairs).
    Distill,
    /// Consistency distillation to one step.
    Consistency,
    /// Adversarial post-training of the one-step generator.
    Apt,
    /// Every configured stage in order, then the evaluation and `report.md`.
    All,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Pretrain => "pretrain",
            Stage::Distill => "distill",
            Stage::Consistency => "consistency",
            Stage::Apt => "apt",
            Stage::All => "all",
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
    stage: Stage,
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

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>12} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("template"),
    );
    bar
}

/// The stages `all` runs for this config, in order.
pub fn configured_stages(run: &RunConfig) -> Vec<Stage> {
    let mut stages = Vec::new();
    if run.pretrain.is_some() {
        stages.push(Stage::Pretrain);
    }
    if run.distill.is_some() {
        stages.push(Stage::Distill);
    }
    if run.consistency.is_some() {
        stages.push(Stage::Consistency);
    }
    if run.apt.is_some() {
        stages.push(Stage::Apt);
    }
    stages
}

/// Updates `stage` is configured for (`None` when its section is absent, or for `all`).
pub fn stage_steps(run: &RunConfig, stage: Stage) -> Result<Option<u64>> {
    Ok(match stage {
        Stage::Pretrain => run.pretrain.as_ref().map(|c| c.train.steps),
        Stage::Distill => run.distill.as_ref().map(|c| c.train.steps),
        Stage::Consistency => run.consistency.as_ref().map(|c| c.train.steps),
        Stage::Apt if run.apt.is_some() => {
            Some(apt_gan::adversarial::AptConfig::from_run(run)?.steps)
        }
        Stage::Apt | Stage::All => None,
    })
}

/// Runs the stage(s). Exit code 130 when interrupted (Ctrl-C / SIGTERM) after the current step
/// was finished and checkpointed.
pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let path = args.config.display().to_string();
    let run = RunConfig::from_file_with(&args.config, &args.overrides)
        .map_err(anyhow::Error::new)
        .and_then(|run| {
            if run.apt.is_some() {
                apt_gan::adversarial::AptConfig::from_run(&run)?;
            }
            Ok(run)
        })
        // Errors about a key do not say which file; those about the file already do.
        .map_err(|e| {
            if e.to_string().contains(&path) {
                e
            } else {
                e.context(path.clone())
            }
        })?;
    if args.dry_run {
        dry_run::print(&run, &configured_stages(&run))?;
        return Ok(ExitCode::SUCCESS);
    }
    run.model()?;
    std::fs::create_dir_all(&run.out)
        .with_context(|| format!("creating the run directory {}", run.out.display()))?;
    log_file::open(&run.out.join("log.txt"))?;
    std::fs::write(
        run.out.join("config.toml"),
        toml::to_string_pretty(&run).unwrap_or_default(),
    )?;
    tracing::info!(config = %args.config.display(), out = %run.out.display(), stage = args.stage.name(), resume = args.resume, "apt train");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // `timeout` and some schedulers deliver one termination twice (to the process and to
        // its group): repeats within 2 s count as one. A later one exits at once, without
        // running exit handlers (libtorch's teardown would race the running step).
        let first: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
        ctrlc::set_handler(move || {
            let mut first = first.lock().expect("signal state");
            match *first {
                None => {
                    *first = Some(std::time::Instant::now());
                    stop.store(true, Ordering::SeqCst);
                    eprintln!(
                        "\ninterrupted: finishing the current step and writing a checkpoint …"
                    );
                }
                Some(at) if at.elapsed() < std::time::Duration::from_secs(2) => {}
                Some(_) => {
                    eprintln!("\nsecond interrupt: exiting now (the last checkpoint is intact)");
                    // SAFETY: `_exit` ends the process immediately; nothing is used after it.
                    unsafe { libc::_exit(130) };
                }
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let stages = match args.stage {
        Stage::All => configured_stages(&run),
        one => vec![one],
    };
    for stage in stages {
        let finished = run.out.join(stage.name()).join("report.json").is_file();
        if args.stage == Stage::All && args.resume && finished {
            println!("{}: finished earlier; skipping", stage.name());
            continue;
        }
        if let Finish::Stopped = run_stage(&run, stage, args.resume, stop.clone())? {
            println!(
                "{}: stopped at a checkpoint; continue with --resume",
                stage.name()
            );
            return Ok(ExitCode::from(130));
        }
    }
    if args.stage == Stage::All {
        let path = report::evaluate_and_write(&run)?;
        println!("report      {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_stage(run: &RunConfig, stage: Stage, resume: bool, stop: Arc<AtomicBool>) -> Result<Finish> {
    let label = stage.name();
    let total = stage_steps(run, stage)?.unwrap_or(0);
    tracing::info!(stage = label, steps = total, resume, "stage start");
    let started = std::time::Instant::now();
    let progress_bar = bar(total, label);
    let progress = |m: &MetricLine| {
        progress_bar.set_position(m.step);
        progress_bar.set_message(format!("loss {:.4} lr {:.2e}", m.loss, m.lr));
        if m.step % 50 == 0 || m.step == total {
            tracing::info!(stage = %m.stage, step = m.step, loss = m.loss, lr = m.lr, grad_norm = m.grad_norm, skipped = m.skipped, "progress");
        }
    };
    let (finish, report) = match stage {
        Stage::Pretrain => {
            let (f, r) = run_pretrain(run, resume, stop, progress)?;
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Distill => {
            let pairs_bar = bar(0, "pairs");
            let pair_progress = |done: usize, shards: usize| {
                pairs_bar.set_length(shards as u64);
                pairs_bar.set_position(done as u64);
            };
            let (f, r) = run_distill(run, resume, stop, pair_progress, progress)?;
            pairs_bar.finish_and_clear();
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Consistency => {
            let (f, r) = run_consistency(run, resume, stop, progress)?;
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Apt | Stage::All => {
            let apt_progress = |m: &apt_gan::adversarial::AptMetrics| {
                progress_bar.set_position(m.step);
                progress_bar.set_message(format!(
                    "D(real) {:+.2} D(fake) {:+.2} aR1 {:.4} G {:.3}",
                    m.d_real, m.d_fake, m.ar1, m.g_loss
                ));
                if m.step % 25 == 0 || m.step == total {
                    tracing::info!(
                        step = m.step,
                        d_real = m.d_real,
                        d_fake = m.d_fake,
                        d_loss = m.d_loss,
                        ar1 = m.ar1,
                        g_loss = m.g_loss,
                        "apt"
                    );
                }
            };
            let (f, r) = apt_gan::adversarial::run_apt(run, resume, stop, apt_progress)?;
            (f, r.map(|r| pretty(&r)))
        }
    };
    progress_bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        stage = label,
        seconds,
        stopped = (finish == Finish::Stopped),
        "stage end"
    );
    if let (Finish::Completed, Some(report)) = (finish, report) {
        println!("{label} report ({seconds:.0} s):\n{report}");
    }
    Ok(finish)
}

/// A stage report as pretty JSON.
fn pretty<T: serde::Serialize>(report: &T) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}
