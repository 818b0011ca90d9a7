//! Stage 2b: consistency distillation on the training data (the paper's initialisation for
//! APT): the student starts from the teacher's weights; with an EMA target, a separate model
//! holds the student's EMA and is refreshed after every update.

use apt_flow::distill::{ConsistencyStep, ConsistencyTarget};
use apt_flow::train::{Part, Shard, Trainer};
use apt_flow::{RunEnd, TensorRng};

use super::common::{start_or_resume, student_from_teacher, Follow, ModelSpec};
use super::distill::finish_student;
use super::{Outcome, StageRun};
use crate::data::TrainData;
use crate::error::{config_error, Result};
use crate::run_dir::Stage;
use crate::text::TextConditioner;

/// Consistency distillation: the student (resumable), then its export and evaluation.
pub fn run(ctx: &mut StageRun) -> Result<Outcome> {
    let run = ctx.config;
    let cfg = run
        .consistency
        .as_ref()
        .ok_or_else(|| config_error("consistency", "section missing"))?;
    run.apply_threads();
    let device = run.device()?;
    let spec = ModelSpec::with_lora(run.model()?, cfg.lora.as_ref());
    let (vs, student, teacher) = student_from_teacher(run, ctx.dir, device, &spec)?;
    run.precision.cast_store(&teacher.vs);
    let text = TextConditioner::for_run(run, device)?;
    let dir = ctx.dir.stage(Stage::Consistency);
    let part = Part::new("model", vs, cfg.train.optimizer, cfg.train.ema_decay)?
        .with_precision(run.precision);
    let rng = TensorRng::new(run.seed, 0);
    let mut trainer = Trainer::new(Stage::Consistency.name(), &dir, &cfg.train, vec![part], rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    // The EMA target holds the student's variables (its adapters too, with LoRA).
    let (target_vs, target_model) = spec.build(run.seed, device)?;
    let space = crate::latent::Space::open(run, ctx.dir)?;
    let mut data = TrainData::open(
        &run.data,
        cfg.train.batch_size,
        run.seed,
        Shard::of(&*ctx.world),
    )?
    .prefetching(device)
    .in_space(&space);
    let ema_target =
        (cfg.method.target == ConsistencyTarget::Ema).then_some((&target_model, &target_vs));
    let mut step = ConsistencyStep::new(
        &cfg.method,
        &student,
        &teacher.model,
        ema_target,
        &mut data,
        &text,
        cfg.train.batch_size,
        device,
    )?
    .with_shard(Shard::of(&*ctx.world))
    .with_recompute(cfg.train.recompute);
    start_or_resume(&mut trainer, &mut step, ctx, Stage::Consistency)?;
    let mut follow = Follow {
        stage: Stage::Consistency,
        progress: &mut *ctx.progress,
    };
    if trainer.run(&mut step, &mut follow)? == RunEnd::Stopped {
        return Ok(Outcome::Stopped);
    }
    let bad_samples = data.skipped();
    finish_student(
        ctx,
        Stage::Consistency,
        &spec,
        &trainer,
        cfg.eval.as_ref(),
        &text,
        bad_samples,
    )
}
