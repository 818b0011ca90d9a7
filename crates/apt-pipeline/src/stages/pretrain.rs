//! Stage 1: rectified-flow pre-training of the teacher, then the export of its EMA (or raw)
//! weights, the validation loss before and after, and an evaluation with the multi-step CFG
//! sampler.

use std::path::{Path, PathBuf};

use apt_data::shapes::Split;
use apt_data::Skipped;
use apt_flow::pretrain::FlowMatchingStep;
use apt_flow::train::{Part, Shard, Trainer};
use apt_flow::{
    flow_matching_loss, sample, Conditioning, Guidance, RunEnd, TensorRng, VelocityModel,
};
use apt_mmdit::{Model, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::common::{export_part, new_model, start_or_resume, Follow, ModelSpec};
use super::{Outcome, StageReport, StageRun};
use crate::config::RunConfig;
use crate::data::TrainData;
use crate::error::{config_error, io_error, Result};
use crate::eval::{patch_grid, shapes_alignment, AlignmentReport};
use crate::latent::Space;
use crate::run_dir::{
    export_record, load_exported, record_path, verify_export, write_json, ExportRecord, Stage,
    MODEL_CONFIG,
};
use crate::text::TextConditioner;
use crate::wan_dir::WanPipelineDir;

/// What pre-training produced (`pretrain/report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainReport {
    /// Updates.
    pub steps: u64,
    /// Validation flow loss of the initial weights (fixed clips, noise and times).
    pub val_loss_start: Option<f64>,
    /// Validation flow loss of the final EMA (or raw) weights.
    pub val_loss_end: Option<f64>,
    /// Text alignment of multi-step CFG samples (moving shapes).
    pub alignment: Option<AlignmentReport>,
    /// The exported teacher weights.
    pub teacher: PathBuf,
    /// Training files skipped as unreadable, with the reason.
    #[serde(default)]
    pub bad_samples: Vec<Skipped>,
    /// The exported teacher this run imported instead of training one (`[pretrain] from`);
    /// `steps` is then the step it was exported at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<PathBuf>,
}

/// Fixed validation batch: clips, conditioning, noise, times.
struct Validation {
    x0: Tensor,
    cond: Conditioning,
    eps: Tensor,
    t: Tensor,
}

impl Validation {
    fn new(
        run: &RunConfig,
        n: usize,
        text: &TextConditioner,
        space: &Space,
        device: Device,
    ) -> Result<Option<Self>> {
        let (Some(shapes), crate::data::DataConfig::Shapes { seed, .. }) =
            (run.data.shapes(), &run.data)
        else {
            return Ok(None);
        };
        if n == 0 {
            return Ok(None);
        }
        let samples: Vec<_> = (0..n as u64)
            .map(|i| shapes.sample(seed.wrapping_add(1_000_003), i, Split::Train))
            .collect::<std::result::Result<_, _>>()?;
        let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
        let videos: Vec<Tensor> = samples.iter().map(|s| s.video.shallow_clone()).collect();
        let x0 = space.from_pixels(&Tensor::stack(&videos, 0).to_device(device))?;
        let mut rng = TensorRng::new(run.seed, 7);
        let eps = rng.normal(&x0.size(), device);
        let t = Tensor::linspace(0.02, 0.98, n as i64, (tch::Kind::Float, device));
        Ok(Some(Self {
            x0,
            cond: text.batch(&captions, &[])?,
            eps,
            t,
        }))
    }

    fn loss(&self, model: &impl VelocityModel) -> Result<f64> {
        let loss =
            tch::no_grad(|| flow_matching_loss(model, &self.x0, &self.eps, &self.t, &self.cond))?;
        Ok(loss.double_value(&[]))
    }
}

/// Runs (or resumes) pre-training, exports the teacher and evaluates it.
pub fn run(ctx: &mut StageRun) -> Result<Outcome> {
    let run = ctx.config;
    if let Some(dir) = run.wan_pipeline()? {
        return import_pipeline(ctx, &dir);
    }
    let cfg = run
        .pretrain
        .as_ref()
        .ok_or_else(|| config_error("pretrain", "section missing"))?;
    if let Some(from) = cfg.import_from() {
        return import(ctx, from);
    }
    run.apply_threads();
    let device = run.device()?;
    let mcfg = run.model()?;
    let (vs, model) = new_model(&mcfg, run.seed, device)?;
    let text = TextConditioner::for_run(run, device)?;
    let dir = ctx.dir.stage(Stage::Pretrain);
    let part = Part::new("model", vs, cfg.train.optimizer, cfg.train.ema_decay)?
        .with_precision(run.precision);
    let rng = TensorRng::new(run.seed, 0);
    let mut trainer = Trainer::new(Stage::Pretrain.name(), &dir, &cfg.train, vec![part], rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    let space = Space::open(run, ctx.dir)?;
    let mut data = TrainData::open(
        &run.data,
        cfg.train.batch_size,
        run.seed,
        Shard::of(&*ctx.world),
    )?
    .prefetching(device)
    .in_space(&space);
    let validation = Validation::new(run, cfg.val_clips, &text, &space, device)?;
    let mut step = FlowMatchingStep {
        model: &model,
        data: &mut data,
        text: &text,
        batch: cfg.train.batch_size,
        shard: Shard::of(&*ctx.world),
        recompute: cfg.train.recompute,
        config: cfg.method,
        device,
    };
    let resumed = start_or_resume(&mut trainer, &mut step, ctx, Stage::Pretrain)?;
    // The initial validation loss is measured once, on the fresh weights, and kept on disk.
    let start_file = ctx.dir.val_loss_start_file();
    let val_loss_start: Option<f64> = match (&validation, resumed) {
        (Some(v), false) if ctx.is_main() => {
            let loss = v.loss(&model)?;
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            std::fs::write(&start_file, loss.to_string()).map_err(io_error(&start_file))?;
            Some(loss)
        }
        _ => std::fs::read_to_string(&start_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    };
    let mut follow = Follow {
        stage: Stage::Pretrain,
        progress: &mut *ctx.progress,
    };
    let finish = trainer.run(&mut step, &mut follow)?;
    if finish == RunEnd::Stopped {
        return Ok(Outcome::Stopped);
    }
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    let (teacher, teacher_path) = export_part(
        run,
        ctx.dir,
        Stage::Pretrain,
        &trainer.parts[0],
        &ModelSpec::full(mcfg.clone()),
        trainer.step,
    )?;
    let (val_loss_end, alignment) =
        evaluate(ctx, &teacher, &mcfg, &text, &space, validation.as_ref())?;
    let report = PretrainReport {
        steps: trainer.step,
        val_loss_start,
        val_loss_end,
        alignment,
        teacher: teacher_path,
        bad_samples: data.skipped(),
        imported_from: None,
    };
    write_json(&ctx.dir.stage_report(Stage::Pretrain), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Pretrain(report))))
}

/// The finished teacher's validation loss and its multi-step CFG text alignment (each `None`
/// when not configured).
fn evaluate(
    ctx: &StageRun,
    teacher: &Model,
    mcfg: &ModelConfig,
    text: &TextConditioner,
    space: &Space,
    validation: Option<&Validation>,
) -> Result<(Option<f64>, Option<AlignmentReport>)> {
    let run = ctx.config;
    let device = run.device()?;
    let val_loss = validation.map(|v| v.loss(teacher)).transpose()?;
    let eval = run.pretrain.as_ref().and_then(|p| p.eval.as_ref());
    let alignment = match (eval, run.data.shapes()) {
        (Some(eval), Some(shapes)) => {
            let null = text.null()?;
            Some(shapes_alignment(
                shapes,
                text,
                eval,
                space,
                patch_grid(mcfg),
                device,
                &ctx.stop,
                |z, cond| {
                    let g = Guidance {
                        cond,
                        uncond: Some(&null),
                        scale: eval.sampler.cfg_scale,
                    };
                    sample(teacher, z, &g, &eval.sampler)
                },
            )?)
        }
        _ => None,
    };
    Ok((val_loss, alignment))
}

/// `[pretrain] from`: checks an exported teacher (integrity record, finite weights, a
/// pre-training export, the run's model config) and exports it as this run's teacher instead
/// of training one; then evaluates it like a trained one.
fn import(ctx: &mut StageRun, from: &Path) -> Result<Outcome> {
    let run = ctx.config;
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    let (weights, record) = check_import(run, from)?;
    run.apply_threads();
    let device = run.device()?;
    let loaded = load_exported(&weights, device)?;
    let mcfg = run.model()?;
    let steps = record.as_ref().map_or(0, |r| r.step);
    tracing::info!(from = %weights.display(), steps, "importing the teacher instead of pre-training");
    let teacher_path = ctx
        .dir
        .export_model(Stage::Pretrain, &loaded.vs, &mcfg, steps)?;
    let text = TextConditioner::for_run(run, device)?;
    let val_clips = run.pretrain.as_ref().map_or(0, |p| p.val_clips);
    let space = Space::open(run, ctx.dir)?;
    let validation = Validation::new(run, val_clips, &text, &space, device)?;
    let (val_loss_end, alignment) = evaluate(
        ctx,
        &loaded.model,
        &mcfg,
        &text,
        &space,
        validation.as_ref(),
    )?;
    let report = PretrainReport {
        steps,
        val_loss_start: None,
        val_loss_end,
        alignment,
        teacher: teacher_path,
        bad_samples: Vec::new(),
        imported_from: Some(weights),
    };
    write_json(&ctx.dir.stage_report(Stage::Pretrain), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Pretrain(report))))
}

/// `[model] from`: loads the Wan pipeline's transformer (strictly: every tensor with its
/// shape, shards or not), checks it is finite, and exports it as this run's teacher.
fn import_pipeline(ctx: &mut StageRun, dir: &WanPipelineDir) -> Result<Outcome> {
    let run = ctx.config;
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    run.apply_threads();
    let mcfg = run.model()?;
    let transformer = dir.transformer();
    tracing::info!(from = %transformer.display(), "taking the teacher from the Wan pipeline");
    let vs = nn::VarStore::new(Device::Cpu);
    Model::from_diffusers_dir(&vs, &transformer)?;
    let path = ctx.dir.export_model(Stage::Pretrain, &vs, &mcfg, 0)?;
    // The export is checked as any other (integrity, finite weights) before a stage uses it.
    load_exported(&path, Device::Cpu)?;
    let report = PretrainReport {
        steps: 0,
        val_loss_start: None,
        val_loss_end: None,
        alignment: None,
        teacher: path,
        bad_samples: Vec::new(),
        imported_from: Some(transformer),
    };
    write_json(&ctx.dir.stage_report(Stage::Pretrain), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Pretrain(report))))
}

/// Checks `[pretrain] from` without loading the weights: an exported teacher (integrity
/// record, the `pretrain` stage's) for this run's model. Returns the weights file and its
/// record.
pub fn check_import(run: &RunConfig, from: &Path) -> Result<(PathBuf, Option<ExportRecord>)> {
    let weights = if from.is_dir() {
        from.join(Stage::Pretrain.export_file())
    } else {
        from.to_path_buf()
    };
    if !weights.is_file() {
        return Err(config_error(
            "pretrain.from",
            format!(
                "{} is not an exported teacher: expected a directory holding {} (with {} and \
                 {MODEL_CONFIG}), or that file",
                from.display(),
                Stage::Pretrain.export_file(),
                record_path(Path::new(Stage::Pretrain.export_file())).display()
            ),
        ));
    }
    if let Some(r) = export_record(&weights)? {
        if r.stage != Stage::Pretrain.name() {
            return Err(config_error(
                "pretrain.from",
                format!(
                    "{} is the export of the `{}` stage, not a pre-trained teacher",
                    weights.display(),
                    r.stage
                ),
            ));
        }
    }
    let model_file = weights.with_file_name(MODEL_CONFIG);
    let theirs = ModelConfig::from_toml_file(&model_file)?;
    let ours = run.model()?;
    if theirs != ours {
        return Err(config_error(
            "pretrain.from",
            format!(
                "the teacher's model config ({}) differs from this run's [model]: {}",
                model_file.display(),
                model_difference(&theirs, &ours)
            ),
        ));
    }
    let record = verify_export(&weights)?;
    Ok((weights, record))
}

/// The first fields in which two model configs differ, as `key: a vs b` (TOML lines).
fn model_difference(a: &ModelConfig, b: &ModelConfig) -> String {
    let (a, b) = (a.to_toml_string(), b.to_toml_string());
    let differing: Vec<String> = a
        .lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(3)
        .map(|(x, y)| format!("`{}` in this run, `{}` in the teacher", y.trim(), x.trim()))
        .collect();
    if differing.is_empty() {
        "they differ".into()
    } else {
        differing.join(", ")
    }
}
