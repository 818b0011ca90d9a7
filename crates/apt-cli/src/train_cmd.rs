//! `apt train --config FILE --stage pretrain|distill|consistency [--resume]`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use apt_flow::distill::{run_consistency, run_distill};
use apt_flow::pretrain::run_pretrain;
use apt_flow::trainer::{Finish, MetricLine};
use apt_flow::RunConfig;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// A pipeline stage.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Stage {
    /// Rectified-flow pre-training of the teacher.
    Pretrain,
    /// Deterministic distillation to one step (teacher ODE pairs).
    Distill,
    /// Consistency distillation to one step.
    Consistency,
    /// Adversarial post-training of the one-step generator.
    Apt,
}

/// Arguments of `apt train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Which stage to run.
    #[arg(long, value_enum)]
    stage: Stage,
    /// Continue from the stage's newest intact checkpoint.
    #[arg(long)]
    resume: bool,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>12} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("template"),
    );
    bar
}

/// Runs the stage and prints its report.
pub fn run(args: TrainArgs) -> Result<()> {
    let run = RunConfig::from_file(&args.config)?;
    std::fs::create_dir_all(&run.out)?;
    std::fs::write(
        run.out.join("config.toml"),
        toml::to_string_pretty(&run).unwrap_or_default(),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let steps = |train: Option<u64>| train.unwrap_or(0);
    let (total, label) = match args.stage {
        Stage::Pretrain => (
            steps(run.pretrain.as_ref().map(|c| c.train.steps)),
            "pretrain",
        ),
        Stage::Distill => (
            steps(run.distill.as_ref().map(|c| c.train.steps)),
            "distill",
        ),
        Stage::Consistency => (
            steps(run.consistency.as_ref().map(|c| c.train.steps)),
            "consistency",
        ),
        Stage::Apt => (
            apt_gan::adversarial::AptConfig::from_run(&run)?.steps,
            "apt",
        ),
    };
    let progress_bar = bar(total, label);
    let progress = |m: &MetricLine| {
        progress_bar.set_position(m.step);
        progress_bar.set_message(format!("loss {:.4} lr {:.2e}", m.loss, m.lr));
        if m.step % 50 == 0 || m.step == total {
            tracing::info!(stage = %m.stage, step = m.step, loss = m.loss, lr = m.lr, grad_norm = m.grad_norm, skipped = m.skipped, "progress");
        }
    };
    let (finish, report) = match args.stage {
        Stage::Pretrain => {
            let (f, r) = run_pretrain(&run, args.resume, stop, progress)?;
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Distill => {
            let pairs_bar = bar(0, "pairs");
            let pair_progress = |done: usize, shards: usize| {
                pairs_bar.set_length(shards as u64);
                pairs_bar.set_position(done as u64);
            };
            let (f, r) = run_distill(&run, args.resume, stop, pair_progress, progress)?;
            pairs_bar.finish_and_clear();
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Consistency => {
            let (f, r) = run_consistency(&run, args.resume, stop, progress)?;
            (f, r.map(|r| pretty(&r)))
        }
        Stage::Apt => {
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
            let (f, r) = apt_gan::adversarial::run_apt(&run, args.resume, stop, apt_progress)?;
            (f, r.map(|r| pretty(&r)))
        }
    };
    progress_bar.finish_and_clear();
    match (finish, report) {
        (Finish::Stopped, _) => println!("{label}: stopped; resume with --resume"),
        (_, Some(report)) => println!("{label} report:\n{report}"),
        (_, None) => println!("{label}: done"),
    }
    Ok(())
}

/// A stage report as pretty JSON.
fn pretty<T: serde::Serialize>(report: &T) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}
