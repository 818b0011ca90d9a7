//! Stage 1: rectified-flow pre-training of the teacher, then the export of its EMA (or raw)
//! weights, the validation loss before and after, and an evaluation with the multi-step CFG
//! sampler.

use std::path::PathBuf;

use apt_data::shapes::Split;
use apt_data::Skipped;
use apt_flow::pretrain::FlowMatchingStep;
use apt_flow::train::{Part, Shard, Trainer};
use apt_flow::{
    flow_matching_loss, sample, Conditioning, Finish, Guidance, TensorRng, VelocityModel,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::common::{export_part, new_model, start_or_resume, Follow};
use super::{Outcome, StageReport, StageRun};
use crate::config::RunConfig;
use crate::data::TrainData;
use crate::error::{config_error, io_error, Result};
use crate::eval::{patch_grid, shapes_alignment, AlignmentReport};
use crate::run_dir::{write_json, Stage};
use crate::text::TextConditioner;

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
        let x0 = Tensor::stack(&videos, 0).to_device(device);
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
    let cfg = run
        .pretrain
        .as_ref()
        .ok_or_else(|| config_error("pretrain", "section missing"))?;
    run.apply_threads();
    let device = run.device()?;
    let mcfg = run.model()?;
    let (vs, model) = new_model(&mcfg, run.seed, device)?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let dir = ctx.dir.stage(Stage::Pretrain);
    let part = Part::new("model", vs, cfg.train.optimizer, cfg.train.ema_decay)?;
    let rng = TensorRng::new(run.seed, 0);
    let mut trainer = Trainer::new(Stage::Pretrain.name(), &dir, &cfg.train, vec![part], rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    let mut data = TrainData::open(&run.data, cfg.train.batch_size, run.seed)?;
    let validation = Validation::new(run, cfg.val_clips, &text, device)?;
    let mut step = FlowMatchingStep {
        model: &model,
        data: &mut data,
        text: &text,
        batch: cfg.train.batch_size,
        shard: Shard::of(&*ctx.world),
        recompute: cfg.train.recompute,
        p_uncond: cfg.p_uncond,
        timesteps: cfg.timesteps,
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
    if finish == Finish::Stopped {
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
        &mcfg,
        trainer.step,
    )?;
    let val_loss_end = match &validation {
        Some(v) => Some(v.loss(&teacher)?),
        None => None,
    };
    let alignment = match (&cfg.eval, run.data.shapes()) {
        (Some(eval), Some(shapes)) => {
            let null = text.null()?;
            Some(shapes_alignment(
                shapes,
                &text,
                eval,
                patch_grid(&mcfg),
                device,
                &ctx.stop,
                |z, cond| {
                    let g = Guidance {
                        cond,
                        uncond: Some(&null),
                        scale: eval.sampler.cfg_scale,
                    };
                    sample(&teacher, z, &g, &eval.sampler)
                },
            )?)
        }
        _ => None,
    };
    let report = PretrainReport {
        steps: trainer.step,
        val_loss_start,
        val_loss_end,
        alignment,
        teacher: teacher_path,
        bad_samples: data.skipped(),
    };
    write_json(&ctx.dir.stage_report(Stage::Pretrain), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Pretrain(report))))
}
