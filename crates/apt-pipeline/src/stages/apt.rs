//! Stage 3, adversarial post-training: the optional image stage (`apt-image`), then the video
//! stage (`apt`). G starts from the distilled student (or the image stage's generator), D from
//! the teacher's weights with fresh heads; each stage exports its (EMA) generator, evaluates
//! it against its starting point and writes its report.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use apt_data::shapes::Split;
use apt_data::Skipped;
use apt_flow::train::{freeze_variables, MetricLine, Observer, Part, Shard, Trainer};
use apt_flow::{OneStepGenerator, RunEnd, TensorRng, TrainConfig};
use apt_gan::adversarial::{AdversarialStep, GENERATOR};
use apt_gan::discriminator::load_backbone;
use apt_gan::{AdversarialConfig, AptDiscriminator, DiscriminatorConfig};
use apt_mmdit::lora;
use apt_mmdit::Model;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::common::{export_part, one_and_two_step, start_or_resume, ModelSpec};
use super::{Outcome, Progress, StageReport, StageRun};
use crate::config::{GeneratorInit, RunConfig};
use crate::data::{DataConfig, TrainData};
use crate::error::{config_error, io_error, Result};
use crate::eval::{patch_grid, shapes_alignment, AlignmentReport};
use crate::latent::Space;
use crate::run_dir::{write_json, RunDir, Stage};
use crate::text::TextConditioner;

/// What an adversarial stage produced (`apt/report.json`, `apt-image/report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AptReport {
    /// Updates.
    pub steps: u64,
    /// The starting generator's one-step alignment and sharpness.
    pub initial: Option<AlignmentReport>,
    /// The APT generator's (EMA) one-step alignment and sharpness.
    pub one_step: Option<AlignmentReport>,
    /// … zero-shot two-step.
    pub two_step: Option<AlignmentReport>,
    /// Exported generator weights.
    pub generator: PathBuf,
    /// Training files skipped as unreadable, with the reason.
    #[serde(default)]
    pub bad_samples: Vec<Skipped>,
}

/// What one adversarial stage trains on and where it starts.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Training clips.
    pub data: DataConfig,
    /// The loop's knobs (the image stage's own step count).
    pub train: TrainConfig,
    /// λ and σ.
    pub method: AdversarialConfig,
    /// D's taps and time shift.
    pub discriminator: DiscriminatorConfig,
    /// The stage whose export starts G.
    pub generator_init: Stage,
}

impl StagePlan {
    /// The plan of `stage` (`AptImage` or `Apt`) for `run`.
    pub fn new(run: &RunConfig, stage: Stage) -> Result<Self> {
        let cfg = run
            .apt
            .as_ref()
            .ok_or_else(|| config_error("apt", "section missing"))?;
        let student = match cfg.generator_init {
            GeneratorInit::Distill => Stage::Distill,
            GeneratorInit::Consistency => Stage::Consistency,
        };
        // `times = "teacher"` (checked against [pretrain] by RunConfig::validate).
        let discriminator = match &run.pretrain {
            Some(p) => cfg.discriminator.with_teacher_times(&p.method.timesteps),
            None => cfg.discriminator.clone(),
        };
        let video = Self {
            data: run.data.clone(),
            train: cfg.train.clone(),
            method: cfg.method,
            discriminator,
            generator_init: student,
        };
        Ok(match (&cfg.image, stage) {
            (Some(_), Stage::Apt) => Self {
                generator_init: Stage::AptImage,
                ..video
            },
            (Some(image), Stage::AptImage) => Self {
                data: run.data.with_frames(image.frames),
                train: TrainConfig {
                    steps: image.steps,
                    ..cfg.train.clone()
                },
                method: cfg.image_method(image),
                discriminator: cfg.image_discriminator(image),
                generator_init: student,
            },
            (None, Stage::AptImage) => {
                return Err(config_error("apt.image", "section missing"));
            }
            _ => video,
        })
    }
}

/// Follows the loop and writes fixed-seed previews of the (EMA) generator.
struct Previews<'a> {
    stage: Stage,
    progress: &'a mut dyn Progress,
    run: &'a RunConfig,
    dir: &'a RunDir,
    data: &'a DataConfig,
    spec: &'a ModelSpec,
    text: &'a TextConditioner,
    space: &'a Space,
}

impl Observer for Previews<'_> {
    fn update(&mut self, line: &MetricLine) {
        self.progress.update(self.stage, line);
    }

    /// One-step samples for fixed prompts and noise, as a PNG grid (moving shapes only).
    fn preview(&mut self, step: u64, parts: &[Part]) -> apt_flow::Result<()> {
        self.write(step, parts).map_err(|e| match e {
            crate::PipelineError::Flow(f) => f,
            other => apt_flow::FlowError::Source(Box::new(other)),
        })
    }
}

impl Previews<'_> {
    fn write(&self, step: u64, parts: &[Part]) -> Result<()> {
        let Some(shapes) = self.data.shapes() else {
            return Ok(());
        };
        let device = self.run.device()?;
        let (_vs, g) = self
            .spec
            .merged(|vs| parts[GENERATOR].copy_exported_to(vs), 0, device)?;
        let captions: Vec<String> = (0..4u64)
            .map(|i| shapes.draw(4242, i, Split::All).map(|s| shapes.caption(&s)))
            .collect::<std::result::Result<_, _>>()?;
        let cond = self.text.batch(&captions, &[])?;
        let [c, t, h, w] = self.space.model_shape(self.data.clip_shape());
        let z = TensorRng::seeded_normal(4242, &[4, c, t, h, w], device);
        let generated = tch::no_grad(|| OneStepGenerator::new(&g).generate(&z, &cond))?;
        let clips = self.space.to_pixels(&generated)?.clamp(-1.0, 1.0);
        // Clips side by side along the width, frames along the grid.
        let strip = Tensor::cat(&(0..4).map(|i| clips.get(i)).collect::<Vec<_>>(), 3);
        let previews = self.dir.previews_dir(self.stage);
        std::fs::create_dir_all(&previews).map_err(io_error(&previews))?;
        apt_data::write_video(previews.join(format!("step-{step:06}.png")), &strip, 8.0)?;
        Ok(())
    }
}

/// The starting generator's one-step alignment: evaluated on a fresh start and kept in
/// `initial.json`; read back from there when resuming.
fn initial_alignment(
    ctx: &StageRun,
    stage: Stage,
    generator: &Model,
    text: &TextConditioner,
    data: &DataConfig,
    space: &Space,
    stop: &AtomicBool,
) -> Result<Option<AlignmentReport>> {
    let file = ctx.dir.initial_eval_file(stage);
    let eval = ctx.config.apt.as_ref().and_then(|a| a.eval.as_ref());
    let (Some(eval), Some(shapes)) = (eval, data.shapes()) else {
        return Ok(None);
    };
    if !ctx.is_main() {
        return Ok(None);
    }
    if ctx.resume && ctx.dir.has_checkpoints(stage) {
        return Ok(std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok()));
    }
    let g = OneStepGenerator::new(generator);
    let device = ctx.config.device()?;
    let patch = patch_grid(&ctx.config.model()?);
    let report = shapes_alignment(shapes, text, eval, space, patch, device, stop, |z, c| {
        g.generate(z, c)
    })?;
    let dir = ctx.dir.stage(stage);
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    write_json(&file, &report)?;
    Ok(Some(report))
}

/// The models an adversarial stage starts from.
pub struct StartingModels {
    /// G's weights: the plan's starting export.
    pub vs_g: nn::VarStore,
    /// G.
    pub generator: Model,
    /// D's weights: the teacher's backbone, fresh heads.
    pub vs_d: nn::VarStore,
    /// D.
    pub discriminator: AptDiscriminator,
}

impl StartingModels {
    /// G from `plan.generator_init`'s export, D's backbone from the teacher's export (both
    /// verified), D's heads initialised from the run's seed. With `[apt.lora]` G and D's
    /// backbone gain adapters and only those (and D's heads) train.
    pub fn load(run: &RunConfig, dir: &RunDir, plan: &StagePlan) -> Result<Self> {
        let device = run.device()?;
        let spec = generator_spec(run)?;
        let (vs_g, generator) = spec.build(run.seed, device)?;
        let init = dir.require_model(plan.generator_init, device)?;
        spec.start_from(&vs_g, &init.vs);
        let teacher = dir.require_model(Stage::Pretrain, device)?;
        let vs_d = nn::VarStore::new(device);
        let discriminator = apt_flow::rng::with_global_seed(run.seed.wrapping_add(1), || {
            let build = || AptDiscriminator::new(vs_d.root(), &spec.config, &plan.discriminator);
            match &spec.lora {
                None => build(),
                Some(lora) => lora::with_lora(lora, build).map(|d| d.0),
            }
        })?;
        load_backbone(&vs_d, &teacher.vs)?;
        if spec.lora.is_some() {
            freeze_variables(&vs_d, |n| {
                n.starts_with("backbone.") && !lora::is_adapter_variable(n)
            });
        }
        Ok(Self {
            vs_g,
            generator,
            vs_d,
            discriminator,
        })
    }
}

/// G's model: the run's, with `[apt.lora]`'s adapters when set.
pub fn generator_spec(run: &RunConfig) -> Result<ModelSpec> {
    Ok(ModelSpec::with_lora(
        run.model()?,
        run.apt.as_ref().and_then(|a| a.lora.as_ref()),
    ))
}

/// `apt.generator_frozen`: G's parameters whose name contains one of `patterns` are frozen
/// ([`freeze_variables`]; the config's validation checked that each names one).
fn freeze(vs: &nn::VarStore, patterns: &[String]) {
    let vars = vs.variables();
    let names = freeze_variables(vs, |name| {
        patterns.iter().any(|p| name.contains(p.as_str()))
    });
    let frozen: i64 = names.iter().map(|n| vars[n].numel() as i64).sum();
    tracing::info!(patterns = ?patterns, parameters = frozen, "G's frozen parameters");
}

/// Runs (or resumes) one adversarial stage.
pub fn run(ctx: &mut StageRun, stage: Stage) -> Result<Outcome> {
    let run = ctx.config;
    let plan = StagePlan::new(run, stage)?;
    let eval = run.apt.as_ref().and_then(|a| a.eval.clone());
    run.apply_threads();
    let device = run.device()?;
    let spec = generator_spec(run)?;
    let mcfg = spec.config.clone();
    let StartingModels {
        vs_g,
        generator,
        vs_d,
        discriminator,
    } = StartingModels::load(run, ctx.dir, &plan)?;
    if let Some(frozen) = run.apt.as_ref().map(|a| &a.generator_frozen) {
        if !frozen.is_empty() {
            freeze(&vs_g, frozen);
        }
    }
    let text = TextConditioner::for_run(run, device)?;
    let space = Space::open(run, ctx.dir)?;
    let mut data = TrainData::open(
        &plan.data,
        plan.train.batch_size,
        run.seed,
        Shard::of(&*ctx.world),
    )?
    .prefetching(device)
    .in_space(&space);
    let d_optimizer = plan.train.optimizer_d.unwrap_or(plan.train.optimizer);
    let parts = vec![
        Part::new(
            "generator",
            vs_g,
            plan.train.optimizer,
            plan.train.ema_decay,
        )?
        .with_precision(run.precision),
        Part::new("discriminator", vs_d, d_optimizer, None)?.with_precision(run.precision),
    ];
    let rng = TensorRng::new(run.seed, 3);
    let mut trainer = Trainer::new(stage.name(), &ctx.dir.stage(stage), &plan.train, parts, rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    let initial = initial_alignment(ctx, stage, &generator, &text, &plan.data, &space, &ctx.stop)?;
    let mut step = AdversarialStep::new(
        &generator,
        &discriminator,
        plan.method,
        &mut data,
        &text,
        plan.train.batch_size,
        device,
    )
    .with_shard(Shard::of(&*ctx.world))
    .with_recompute(plan.train.recompute);
    start_or_resume(&mut trainer, &mut step, ctx, stage)?;
    let mut previews = Previews {
        stage,
        progress: &mut *ctx.progress,
        run,
        dir: ctx.dir,
        data: &plan.data,
        spec: &spec,
        text: &text,
        space: &space,
    };
    if trainer.run(&mut step, &mut previews)? == RunEnd::Stopped {
        return Ok(Outcome::Stopped);
    }
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    let (g, path) = export_part(
        run,
        ctx.dir,
        stage,
        &trainer.parts[GENERATOR],
        &spec,
        trainer.step,
    )?;
    let (raw_vs, _raw) = spec.merged(
        |vs| {
            trainer.parts[GENERATOR].copy_weights_to(vs);
            Ok(())
        },
        run.seed,
        device,
    )?;
    let raw_path = ctx.dir.raw_export_path(stage);
    ctx.dir
        .export_to(stage, &raw_path, &raw_vs, &mcfg, trainer.step)?;
    let (one_step, two_step) = one_and_two_step(
        run,
        &plan.data,
        &space,
        &g,
        &mcfg,
        eval.as_ref(),
        &text,
        &ctx.stop,
    )?;
    let report = AptReport {
        steps: trainer.step,
        initial,
        one_step,
        two_step,
        generator: path,
        bad_samples: data.skipped(),
    };
    write_json(&ctx.dir.stage_report(stage), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Apt(report))))
}
