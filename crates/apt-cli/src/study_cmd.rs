//! `apt study --config configs/studies/NAME.toml [--init RUN] [--evaluate-only]`: trains what the study
//! still lacks (the shared init, then every variant × seed; finished runs are skipped, stopped
//! ones resume), evaluates every run against the shared distilled one-step generator and
//! writes `results.md`, `results.json` and `plots/` under the study's `out`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use apt_flow::train::MetricLine;
use apt_flow::RunEnd;
use apt_pipeline::stages::{Outcome, Progress};
use apt_pipeline::study::{evaluate_study, run_study, write_results, Study, StudyProgress};
use apt_pipeline::{RunConfig, Stage};
use clap::Args;

use crate::progress::{bar, stop_flag, StageBars};

/// Arguments of `apt study`.
#[derive(Args)]
pub struct StudyArgs {
    /// The study file (base run config, seeds, variants).
    #[arg(long)]
    config: PathBuf,
    /// Reuse this finished run's teacher and distilled student (overrides the file's `init`).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Evaluate the finished runs only (train nothing).
    #[arg(long)]
    evaluate_only: bool,
}

/// The stage bars, switched to each run's config as the study moves on.
struct StudyBars {
    bars: StageBars,
}

impl Progress for StudyBars {
    fn stage_start(&mut self, stage: Stage, steps: u64) {
        self.bars.stage_start(stage, steps)
    }
    fn update(&mut self, stage: Stage, line: &MetricLine) {
        self.bars.update(stage, line)
    }
    fn pairs(&mut self, done: usize, total: usize) {
        self.bars.pairs(done, total)
    }
    fn stage_end(&mut self, stage: Stage, outcome: &Outcome) {
        self.bars.stage_end(stage, outcome)
    }
    fn skipped(&mut self, stage: Stage) {
        self.bars.skipped(stage)
    }
}

impl StudyProgress for StudyBars {
    fn run_start(
        &mut self,
        label: &str,
        config: &RunConfig,
        index: usize,
        total: usize,
        skipped: bool,
    ) {
        self.bars.follow(config.clone());
        let what = if skipped {
            "finished earlier"
        } else {
            "training"
        };
        println!(
            "[{index}/{total}] {label}: {what} ({})",
            config.out.display()
        );
        tracing::info!(run = label, index, total, skipped, "study run");
    }
}

/// Runs the study. Exit code 130 when interrupted (the current run at a checkpoint; run the
/// same command again to continue).
pub fn run(args: StudyArgs) -> Result<ExitCode> {
    let study = Study::load_with_init(&args.config, args.init)?;
    std::fs::create_dir_all(&study.config.out)?;
    crate::log_file::open(&study.config.out.join("study.log"))?;
    let stop = stop_flag()?;
    if !args.evaluate_only {
        let mut bars = StudyBars {
            bars: StageBars::new(study.shared.clone()),
        };
        if run_study(&study, &mut bars, stop.clone())? == RunEnd::Stopped {
            println!("stopped at a checkpoint; run the same command again to continue");
            return Ok(ExitCode::from(130));
        }
    }
    let eval_bar = bar(0, "evaluate");
    let results = evaluate_study(&study, &stop, |done, total, name| {
        eval_bar.set_length(total as u64);
        eval_bar.set_position(done as u64);
        eval_bar.set_message(name.to_string());
    });
    eval_bar.finish_and_clear();
    let results = match results {
        Ok(r) => r,
        Err(e) if e.is_interrupted() => {
            println!("evaluation stopped before writing anything");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    let path = write_results(&study, &results)?;
    print!("{}", apt_pipeline::study::results::markdown(&results));
    println!("results     {}", path.display());
    Ok(ExitCode::SUCCESS)
}
