//! What the stage drivers share: following the loop, starting or resuming it, building a
//! student from the teacher, exporting a trained part, and evaluating a one-step generator.

use std::sync::atomic::AtomicBool;

use apt_flow::train::{copy_weights, MetricLine, Observer, Part, TrainStep, Trainer};
use apt_flow::OneStepGenerator;
use apt_mmdit::{Model, ModelConfig};
use tch::{nn, Device};

use super::{Progress, StageRun};
use crate::config::{EvalConfig, RunConfig};
use crate::data::DataConfig;
use crate::error::{config_error, PipelineError, Result};
use crate::eval::{patch_grid, shapes_alignment, AlignmentReport};
use crate::latent::Space;
use crate::run_dir::{LoadedModel, RunDir, Stage};
use crate::text::TextConditioner;

/// Forwards the loop's metric lines to the run's [`Progress`].
pub struct Follow<'a> {
    /// The stage being trained.
    pub stage: Stage,
    /// Who follows.
    pub progress: &'a mut dyn Progress,
}

impl Observer for Follow<'_> {
    fn update(&mut self, line: &MetricLine) {
        self.progress.update(self.stage, line);
    }
}

/// Resumes from the newest checkpoint when `ctx.resume` and there is one; returns whether it
/// did. A fresh start on a stage that holds checkpoints is an error (the run directory's
/// checks say so first; this guards direct callers).
pub fn start_or_resume(
    trainer: &mut Trainer,
    step: &mut impl TrainStep,
    ctx: &StageRun,
    stage: Stage,
) -> Result<bool> {
    let resumed = ctx.resume && trainer.resume(step)?;
    if !resumed && ctx.dir.has_checkpoints(stage) {
        return Err(PipelineError::File {
            path: ctx.dir.checkpoints(stage),
            reason: "already holds checkpoints: pass --resume to continue, or remove it to \
                     start over"
                .into(),
        });
    }
    Ok(resumed)
}

/// A fresh model of `cfg` on `device`, initialised from `seed` (then overwritten by weights).
pub fn new_model(cfg: &ModelConfig, seed: u64, device: Device) -> Result<(nn::VarStore, Model)> {
    let vs = nn::VarStore::new(device);
    let model = apt_flow::rng::with_global_seed(seed, || Model::new(vs.root(), cfg))?;
    Ok((vs, model))
}

/// The exported teacher (checked against the run's model config) and a student initialised
/// from its weights.
pub fn student_from_teacher(
    run: &RunConfig,
    dir: &RunDir,
    device: Device,
) -> Result<(nn::VarStore, Model, LoadedModel)> {
    let teacher = dir.require_model(Stage::Pretrain, device)?;
    if teacher.config != run.model()? {
        return Err(config_error(
            "model",
            format!(
                "differs from the pre-trained teacher's {}",
                dir.model_config_file(Stage::Pretrain).display()
            ),
        ));
    }
    let (vs, student) = new_model(&teacher.config, run.seed, device)?;
    copy_weights(&teacher.vs, &vs);
    Ok((vs, student, teacher))
}

/// Exports `part` (its EMA when it has one) as `stage`'s model through a fresh model of
/// `cfg`; returns that model and the export's path. Rank 0 of a data-parallel run calls it.
pub fn export_part(
    run: &RunConfig,
    dir: &RunDir,
    stage: Stage,
    part: &Part,
    cfg: &ModelConfig,
    step: u64,
) -> Result<(Model, std::path::PathBuf)> {
    let (vs, model) = new_model(cfg, run.seed, run.device()?)?;
    part.copy_exported_to(&vs)?;
    let path = dir.export_model(stage, &vs, cfg, step)?;
    Ok((model, path))
}

/// One-step and zero-shot two-step text alignment of `generator` on the moving shapes of
/// `data` (`None`s for file data or without an eval config).
#[allow(clippy::too_many_arguments)]
pub fn one_and_two_step(
    run: &RunConfig,
    data: &DataConfig,
    space: &Space,
    generator: &Model,
    generator_config: &ModelConfig,
    eval: Option<&EvalConfig>,
    text: &TextConditioner,
    stop: &AtomicBool,
) -> Result<(Option<AlignmentReport>, Option<AlignmentReport>)> {
    let (Some(eval), Some(shapes)) = (eval, data.shapes()) else {
        return Ok((None, None));
    };
    let device = run.device()?;
    let g = OneStepGenerator::new(generator);
    let patch = patch_grid(generator_config);
    let one = shapes_alignment(shapes, text, eval, space, patch, device, stop, |z, c| {
        g.generate(z, c)
    })?;
    let two = shapes_alignment(shapes, text, eval, space, patch, device, stop, |z, c| {
        g.generate_steps(z, c, 2)
    })?;
    Ok((Some(one), Some(two)))
}
