//! What the stage drivers share: following the loop, starting or resuming it, building a
//! student from the teacher, exporting a trained part, and evaluating a one-step generator.

use std::sync::atomic::AtomicBool;

use apt_flow::train::{freeze_variables, MetricLine, Observer, Part, TrainStep, Trainer};
use apt_flow::OneStepGenerator;
use apt_mmdit::lora::{self, LoraConfig};
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
            reason: "already holds checkpoints: pass --resume to continue, or --fresh to \
                     move the run aside and start over"
                .into(),
        });
    }
    Ok(resumed)
}

/// A fresh model of `cfg` on `device`, initialised from `seed` (then overwritten by weights).
pub fn new_model(cfg: &ModelConfig, seed: u64, device: Device) -> Result<(nn::VarStore, Model)> {
    ModelSpec::full(cfg.clone()).build(seed, device)
}

/// The model a stage trains: its config, and the adapters it trains instead of every weight
/// (`[<stage>.lora]`).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The model.
    pub config: ModelConfig,
    /// LoRA, when the stage trains adapters.
    pub lora: Option<LoraConfig>,
}

impl ModelSpec {
    /// Every weight trained.
    pub fn full(config: ModelConfig) -> Self {
        Self { config, lora: None }
    }

    /// `lora`'s adapters trained (every weight when `None`).
    pub fn with_lora(config: ModelConfig, lora: Option<&LoraConfig>) -> Self {
        Self {
            config,
            lora: lora.cloned(),
        }
    }

    /// A fresh model with the adapters attached (the variables of the stage's trained part),
    /// initialised from `seed`.
    pub fn build(&self, seed: u64, device: Device) -> Result<(nn::VarStore, Model)> {
        let vs = nn::VarStore::new(device);
        let model = apt_flow::rng::with_global_seed(seed, || match &self.lora {
            None => Model::new(vs.root(), &self.config),
            Some(lora) => {
                lora::with_lora(lora, || Model::new(vs.root(), &self.config)).map(|m| m.0)
            }
        })?;
        Ok((vs, model))
    }

    /// Loads `weights` (a full model's, e.g. the teacher's) into the base of `vs` and, with
    /// LoRA, freezes every variable but the adapters. Returns how many variables train.
    pub fn start_from(&self, vs: &nn::VarStore, weights: &nn::VarStore) -> usize {
        copy_base_weights(weights, vs);
        if self.lora.is_some() {
            freeze_variables(vs, |name| !lora::is_adapter_variable(name));
        }
        vs.trainable_variables().len()
    }

    /// The full model (adapters merged) of the weights `fill` puts into a model of this spec.
    pub fn merged(
        &self,
        fill: impl FnOnce(&nn::VarStore) -> apt_flow::Result<()>,
        seed: u64,
        device: Device,
    ) -> Result<(nn::VarStore, Model)> {
        let (vs, model) = self.build(seed, device)?;
        fill(&vs)?;
        let Some(lora) = &self.lora else {
            return Ok((vs, model));
        };
        let (plain_vs, plain) = new_model(&self.config, seed, device)?;
        let merged: std::collections::BTreeMap<String, tch::Tensor> =
            lora::merged_weights(&vs, lora.scale())
                .into_iter()
                .collect();
        tch::no_grad(|| {
            for (k, mut v) in plain_vs.variables() {
                v.copy_(&merged[&k]);
            }
        });
        Ok((plain_vs, plain))
    }
}

/// Copies every same-named non-adapter variable of `from` into `to` (adapters keep their
/// initialisation).
pub fn copy_base_weights(from: &nn::VarStore, to: &nn::VarStore) {
    let src = from.variables();
    tch::no_grad(|| {
        for (k, mut v) in to.variables() {
            if !lora::is_adapter_variable(&k) {
                v.copy_(&src[&k]);
            }
        }
    });
}

/// The exported teacher (checked against the run's model config) and a student of `spec`
/// initialised from its weights (only the adapters training, with LoRA).
pub fn student_from_teacher(
    run: &RunConfig,
    dir: &RunDir,
    device: Device,
    spec: &ModelSpec,
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
    let (vs, student) = spec.build(run.seed, device)?;
    spec.start_from(&vs, &teacher.vs);
    Ok((vs, student, teacher))
}

/// Exports `part` (its EMA when it has one) as `stage`'s model — the full model, adapters
/// merged, and with LoRA the adapters alone as `lora.safetensors` (diffusers' layout) —
/// returns the full model and the export's path. Rank 0 of a data-parallel run calls it.
pub fn export_part(
    run: &RunConfig,
    dir: &RunDir,
    stage: Stage,
    part: &Part,
    spec: &ModelSpec,
    step: u64,
) -> Result<(Model, std::path::PathBuf)> {
    let device = run.device()?;
    if let Some(lora) = &spec.lora {
        let (vs, _) = spec.build(run.seed, device)?;
        part.copy_exported_to(&vs)?;
        let file = dir.lora_path(stage);
        std::fs::create_dir_all(dir.stage(stage))
            .map_err(crate::error::io_error(&dir.stage(stage)))?;
        let n = lora::save_adapter_file(&vs, lora, "", &file)?;
        tracing::info!(adapters = n, file = %file.display(), "LoRA adapters written");
    }
    let (vs, model) = spec.merged(|vs| part.copy_exported_to(vs), run.seed, device)?;
    let path = dir.export_model(stage, &vs, &spec.config, step)?;
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
