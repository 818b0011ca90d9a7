//! The stage drivers: each builds its models, data and text from the run config, hands a step
//! to `apt-flow`'s training loop, exports its model into the run directory, evaluates it and
//! writes its `report.json` (written last: a stage with a report has finished).

pub mod apt;
pub mod common;
pub mod consistency;
pub mod distill;
pub mod pretrain;
pub mod vae;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apt_flow::train::{Collective, MetricLine};
use apt_flow::RunEnd;
use serde::Serialize;

use crate::config::RunConfig;
use crate::error::Result;
use crate::run_dir::{RunDir, Stage};

pub use apt::AptReport;
pub use distill::DistillReport;
pub use pretrain::PretrainReport;
pub use vae::VaeReport;

/// Who follows a run (the command line's progress bars and log lines). Every method does
/// nothing by default, so `()` is a silent follower.
pub trait Progress {
    /// A stage starts (`steps` updates in all).
    fn stage_start(&mut self, _stage: Stage, _steps: u64) {}
    /// After every update.
    fn update(&mut self, _stage: Stage, _line: &MetricLine) {}
    /// Teacher pair shards generated so far (deterministic distillation).
    fn pairs(&mut self, _done: usize, _total: usize) {}
    /// A stage ended.
    fn stage_end(&mut self, _stage: Stage, _outcome: &Outcome) {}
    /// A finished stage is skipped (resuming).
    fn skipped(&mut self, _stage: Stage) {}
    /// The run's evaluation: `done` of `total` generators, the last one `name`.
    fn evaluated(&mut self, _done: usize, _total: usize, _name: &str) {}
}

impl Progress for () {}

/// What a stage produced (its `report.json`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StageReport {
    /// The VAE.
    Vae(VaeReport),
    /// Pre-training.
    Pretrain(PretrainReport),
    /// Deterministic or consistency distillation.
    Distill(DistillReport),
    /// An adversarial stage.
    Apt(AptReport),
}

/// How a stage ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Finished; its report.
    Completed(Box<StageReport>),
    /// The stop flag was raised: the last update was checkpointed (or, outside training,
    /// nothing was written); `--resume` continues.
    Stopped,
    /// Trained as a rank other than 0 of a data-parallel run: rank 0 exported the model and
    /// wrote the report.
    Trained,
}

/// What a stage driver needs.
pub struct StageRun<'a> {
    /// The run's config.
    pub config: &'a RunConfig,
    /// Its files.
    pub dir: &'a RunDir,
    /// Continue from the stage's newest checkpoint, if there is one.
    pub resume: bool,
    /// Raised (Ctrl-C) to stop at the next safe point.
    pub stop: Arc<AtomicBool>,
    /// Who follows the run.
    pub progress: &'a mut dyn Progress,
    /// The ranks of a data-parallel run (`Rc::new(SingleProcess)` for one process). Every rank
    /// trains; rank 0 alone writes exports, reports and the evaluation.
    pub world: Rc<dyn Collective>,
}

impl StageRun<'_> {
    /// True once the stop flag is raised.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether this process writes the run's files (rank 0).
    pub fn is_main(&self) -> bool {
        self.world.is_main()
    }
}

/// Updates `stage` is configured for (0 when its section is absent).
pub fn stage_steps(run: &RunConfig, stage: Stage) -> u64 {
    match stage {
        Stage::AptImage => run
            .apt
            .as_ref()
            .and_then(|a| a.image.as_ref())
            .map_or(0, |i| i.steps),
        _ => run.train_config(stage).map_or(0, |t| t.steps),
    }
}

/// Runs one stage. An interruption outside the training loop (pair generation, evaluation)
/// is [`Outcome::Stopped`] too.
pub fn run_stage(ctx: &mut StageRun, stage: Stage) -> Result<Outcome> {
    ctx.progress
        .stage_start(stage, stage_steps(ctx.config, stage));
    let outcome = match stage {
        Stage::Vae => vae::run(ctx),
        Stage::Pretrain => pretrain::run(ctx),
        Stage::Distill => distill::run(ctx),
        Stage::Consistency => consistency::run(ctx),
        Stage::AptImage | Stage::Apt => apt::run(ctx, stage),
    };
    let outcome = match outcome {
        Err(e) if e.is_interrupted() => Ok(Outcome::Stopped),
        other => other,
    }?;
    // The next stage reads what rank 0 exported.
    ctx.world.barrier()?;
    ctx.progress.stage_end(stage, &outcome);
    Ok(outcome)
}

/// Runs `stages` in order (see [`crate::session::planned_stages`]); when resuming, finished
/// stages are skipped, except the last one of an explicit selection (`explicit`), which
/// resumes from its final checkpoint. Stops at the first stopped stage.
pub fn run_stages(ctx: &mut StageRun, stages: &[Stage], explicit: bool) -> Result<RunEnd> {
    for (i, &stage) in stages.iter().enumerate() {
        if crate::session::skips_as_finished(ctx.dir, stages, i, ctx.resume, explicit) {
            tracing::info!(stage = stage.name(), "finished earlier; skipping");
            ctx.progress.skipped(stage);
            continue;
        }
        if let Outcome::Stopped = run_stage(ctx, stage)? {
            return Ok(RunEnd::Stopped);
        }
    }
    Ok(RunEnd::Completed)
}
