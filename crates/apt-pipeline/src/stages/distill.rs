//! Stage 2a: deterministic distillation. The teacher's ODE pairs are generated into shard files
//! (shard `k` is a pure function of the seed, `k` and the configs, so an interrupted generation
//! resumes where it stopped and reproduces the same pairs; in a data-parallel run each rank
//! makes every world-th shard), then the student — initialised from the teacher — learns
//! `z − Ĝ(z, c, 1) ≈ x_teacher`.

use std::path::{Path, PathBuf};

use apt_data::shapes::Split;
use apt_data::Skipped;
use apt_flow::distill::{PairDistillStep, Pairs};
use apt_flow::train::{MetricsLog, Part, Shard, Trainer};
use apt_flow::{Conditioning, RunEnd, TensorRng};
use apt_mmdit::Model;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::common::{
    export_part, one_and_two_step, start_or_resume, student_from_teacher, Follow, ModelSpec,
};
use super::{Outcome, StageReport, StageRun};
use crate::config::{DataConfig, DistillSection, EvalConfig};
use crate::error::{config_error, io_error, PipelineError, Result};
use crate::eval::AlignmentReport;
use crate::latent::Space;
use crate::run_dir::{write_json, Stage};
use crate::text::TextConditioner;

/// What a distillation stage produced (`distill/` or `consistency/report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillReport {
    /// Updates.
    pub steps: u64,
    /// Mean loss of the last 10% of updates.
    pub final_loss: f64,
    /// One-step text alignment.
    pub one_step: Option<AlignmentReport>,
    /// Zero-shot two-step text alignment.
    pub two_step: Option<AlignmentReport>,
    /// The exported student weights.
    pub student: PathBuf,
    /// Training files skipped as unreadable, with the reason.
    #[serde(default)]
    pub bad_samples: Vec<Skipped>,
}

/// Generates (or completes) the pair shards in `dir` and loads them; checks the stop flag
/// between shards ([`PipelineError::Interrupted`]).
fn teacher_pairs(
    ctx: &mut StageRun,
    cfg: &DistillSection,
    teacher: &Model,
    text: &TextConditioner,
    dir: &Path,
) -> Result<Pairs> {
    let run = ctx.config;
    let prompts = PairPrompts::of(run, cfg)?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let device = run.device()?;
    let null = text.null()?;
    let shards = cfg.pairs.div_ceil(cfg.shard_size);
    let [c, t, h, w] = run.model_clip_shape()?;
    let mut loaded = Vec::with_capacity(shards);
    // Rank r generates the missing shards k ≡ r (mod world) (shard k is a pure function of the
    // seed, k and the configs, whoever makes it); every rank then reads them all.
    let (rank, world) = (ctx.world.rank(), ctx.world.world_size());
    for k in 0..shards {
        let generate = k % world == rank;
        if ctx.stopping() {
            return Err(PipelineError::Interrupted);
        }
        let path = dir.join(format!("shard-{k:05}.safetensors"));
        let n = cfg.shard_size.min(cfg.pairs - k * cfg.shard_size);
        if generate && !path.is_file() {
            let first = (k * cfg.shard_size) as u64;
            let captions: Vec<String> = (first..first + n as u64)
                .map(|i| prompts.prompt(i))
                .collect::<Result<_>>()?;
            let cond = text.batch(&captions, &[])?;
            let z =
                TensorRng::new(run.seed, 1_000 + k as u64).normal(&[n as i64, c, t, h, w], device);
            let pairs = Pairs::generate(teacher, z, cond, &null, &cfg.teacher)?;
            write_shard(&path, &pairs)?;
        }
        ctx.progress.pairs(k + 1, shards);
    }
    ctx.world.barrier()?;
    for k in 0..shards {
        let path = dir.join(format!("shard-{k:05}.safetensors"));
        let n = cfg.shard_size.min(cfg.pairs - k * cfg.shard_size);
        loaded.push(read_shard(&path, n)?);
    }
    Ok(Pairs::cat(&loaded, device))
}

/// That the pairs have prompts: the prompt file reads and holds one, or the data set has
/// captions (what [`crate::preflight`] checks before a run starts).
pub fn check_prompts(run: &crate::config::RunConfig, cfg: &DistillSection) -> Result<()> {
    PairPrompts::of(run, cfg).map(|_| ())
}

/// Where the pairs' prompts come from (see [`DistillSection::prompts`]).
enum PairPrompts<'a> {
    /// The moving-shapes captions of training samples drawn from the data seed.
    Shapes(&'a apt_data::shapes::ShapesConfig, u64),
    /// A fixed list, used in turn.
    List(Vec<String>),
}

impl<'a> PairPrompts<'a> {
    fn of(run: &'a crate::config::RunConfig, cfg: &DistillSection) -> Result<Self> {
        if let Some(file) = &cfg.prompts {
            let text = std::fs::read_to_string(file).map_err(io_error(file))?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                return Err(config_error(
                    "distill.prompts",
                    format!("{} holds no prompt (one per line)", file.display()),
                ));
            }
            return Ok(Self::List(lines));
        }
        match &run.data {
            DataConfig::Shapes { seed, .. } => Ok(Self::Shapes(
                run.data.shapes().expect("shapes data"),
                seed.wrapping_add(2_000_003),
            )),
            DataConfig::Files {
                path,
                on_bad_sample,
                ..
            }
            | DataConfig::Latents {
                path,
                on_bad_sample,
                ..
            } => {
                let set = apt_data::Dataset::open(path, *on_bad_sample)?;
                let captions: Vec<String> = set.captions().into_iter().map(String::from).collect();
                if captions.is_empty() {
                    return Err(config_error(
                        "distill.prompts",
                        format!(
                            "missing, and {} has no captions to draw prompts from",
                            path.display()
                        ),
                    ));
                }
                Ok(Self::List(captions))
            }
        }
    }

    /// The prompt of pair `i`.
    fn prompt(&self, i: u64) -> Result<String> {
        match self {
            Self::Shapes(shapes, seed) => Ok(shapes
                .draw(*seed, i, Split::Train)
                .map(|s| shapes.caption(&s))?),
            Self::List(list) => Ok(list[(i % list.len() as u64) as usize].clone()),
        }
    }
}

fn write_shard(path: &Path, pairs: &Pairs) -> Result<()> {
    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
    let tensors = [
        ("z", cpu(&pairs.z)),
        ("x", cpu(&pairs.x)),
        ("context", cpu(&pairs.cond.context)),
        ("pooled", cpu(&pairs.cond.pooled)),
    ];
    apt_mmdit::weights::write_atomically(path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(apt_mmdit::MmditError::from)
    })?;
    Ok(())
}

fn read_shard(path: &Path, n: usize) -> Result<Pairs> {
    let bad = |reason: String| PipelineError::File {
        path: path.to_path_buf(),
        reason: format!("{reason}; delete it to regenerate"),
    };
    let read: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("unreadable pair shard ({e})")))?
        .into_iter()
        .collect();
    let get = |key: &str| -> Result<Tensor> {
        let t = read
            .get(key)
            .ok_or_else(|| bad(format!("missing `{key}`")))?;
        if t.size()[0] != n as i64 {
            return Err(bad(format!("holds {} pairs, expected {n}", t.size()[0])));
        }
        Ok(t.shallow_clone())
    };
    Ok(Pairs {
        z: get("z")?,
        x: get("x")?,
        cond: Conditioning {
            context: get("context")?,
            pooled: get("pooled")?,
        },
    })
}

/// Exports the trained student (EMA if any), evaluates one- and two-step generation, and
/// writes the stage's report.
#[allow(clippy::too_many_arguments)]
pub fn finish_student(
    ctx: &StageRun,
    stage: Stage,
    spec: &ModelSpec,
    trainer: &Trainer,
    eval: Option<&EvalConfig>,
    text: &TextConditioner,
    bad_samples: Vec<Skipped>,
) -> Result<Outcome> {
    if !ctx.is_main() {
        return Ok(Outcome::Trained);
    }
    let run = ctx.config;
    let mcfg = &spec.config;
    let (student, path) = export_part(run, ctx.dir, stage, &trainer.parts[0], spec, trainer.step)?;
    let space = Space::open(run, ctx.dir)?;
    let (one_step, two_step) = one_and_two_step(
        run, &run.data, &space, &student, mcfg, eval, text, &ctx.stop,
    )?;
    let losses: Vec<f64> = MetricsLog::read(&ctx.dir.stage_metrics(stage))
        .iter()
        .map(|m| m.value("loss"))
        .collect();
    let tail = &losses[losses.len() - (losses.len() / 10).max(1).min(losses.len())..];
    let report = DistillReport {
        steps: trainer.step,
        final_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        one_step,
        two_step,
        student: path,
        bad_samples,
    };
    write_json(&ctx.dir.stage_report(stage), &report)?;
    Ok(Outcome::Completed(Box::new(StageReport::Distill(report))))
}

/// Deterministic distillation: pairs (resumable), then the student (resumable).
pub fn run(ctx: &mut StageRun) -> Result<Outcome> {
    let run = ctx.config;
    let cfg = run
        .distill
        .as_ref()
        .ok_or_else(|| config_error("distill", "section missing"))?;
    run.apply_threads();
    let device = run.device()?;
    let spec = ModelSpec::with_lora(run.model()?, cfg.lora.as_ref());
    let (vs, student, teacher) = student_from_teacher(run, ctx.dir, device, &spec)?;
    run.precision.cast_store(&teacher.vs);
    let text = TextConditioner::for_run(run, device)?;
    let pairs_dir = ctx.dir.pairs_dir();
    let pairs = teacher_pairs(ctx, cfg, &teacher.model, &text, &pairs_dir)?;
    let dir = ctx.dir.stage(Stage::Distill);
    let part = Part::new("model", vs, cfg.train.optimizer, cfg.train.ema_decay)?
        .with_precision(run.precision);
    let rng = TensorRng::new(run.seed, 0);
    let mut trainer = Trainer::new(Stage::Distill.name(), &dir, &cfg.train, vec![part], rng)?
        .with_collective(ctx.world.clone());
    trainer.stop = ctx.stop.clone();
    let mut step = PairDistillStep::new(&student, &pairs, cfg.train.batch_size, run.seed)
        .with_shard(Shard::of(&*ctx.world))
        .with_recompute(cfg.train.recompute);
    start_or_resume(&mut trainer, &mut step, ctx, Stage::Distill)?;
    let mut follow = Follow {
        stage: Stage::Distill,
        progress: &mut *ctx.progress,
    };
    if trainer.run(&mut step, &mut follow)? == RunEnd::Stopped {
        return Ok(Outcome::Stopped);
    }
    finish_student(
        ctx,
        Stage::Distill,
        &spec,
        &trainer,
        cfg.eval.as_ref(),
        &text,
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;

    fn run_with(dir: &Path, extra: &[String]) -> RunConfig {
        let smoke = include_str!("../../../../configs/smoke.toml");
        let mut sets = vec![format!("out={:?}", dir.join("run").to_string_lossy())];
        sets.extend_from_slice(extra);
        RunConfig::parse(smoke, &sets).unwrap()
    }

    #[test]
    fn pair_prompts_come_from_the_prompt_file_else_the_captions_else_the_shapes() {
        let dir = tempfile::tempdir().unwrap();
        // Moving shapes: the benchmark's captions, as before.
        let run = run_with(dir.path(), &[]);
        let shapes = PairPrompts::of(&run, run.distill.as_ref().unwrap()).unwrap();
        assert!(shapes.prompt(0).unwrap().contains("moves"));

        // A folder of captioned clips: its captions, sorted, in turn.
        let clips = dir.path().join("clips");
        std::fs::create_dir_all(&clips).unwrap();
        for (name, caption) in [("b", "a zebra grazes"), ("a", "a cat sleeps")] {
            std::fs::write(clips.join(format!("{name}.mp4")), b"").unwrap();
            std::fs::write(clips.join(format!("{name}.txt")), caption).unwrap();
        }
        let files = format!(
            "data={{ kind = \"files\", path = {:?}, clip = {{ num_frames = 4, step = {{ fps = \
             8.0 }}, height = 16, width = 16, offset = \"random\", crop = \"random\" }} }}",
            clips.to_string_lossy()
        );
        let run = run_with(dir.path(), std::slice::from_ref(&files));
        let from_data = PairPrompts::of(&run, run.distill.as_ref().unwrap()).unwrap();
        let drawn: Vec<String> = (0..3).map(|i| from_data.prompt(i).unwrap()).collect();
        assert_eq!(drawn, ["a cat sleeps", "a zebra grazes", "a cat sleeps"]);

        // A prompt file wins; blank lines are skipped; an empty one is refused naming the key.
        let list = dir.path().join("prompts.txt");
        std::fs::write(&list, "a red kite\n\n  a blue boat  \n").unwrap();
        let prompts = format!("distill.prompts={:?}", list.to_string_lossy());
        let run = run_with(dir.path(), &[files.clone(), prompts]);
        let from_file = PairPrompts::of(&run, run.distill.as_ref().unwrap()).unwrap();
        let drawn: Vec<String> = (0..3).map(|i| from_file.prompt(i).unwrap()).collect();
        assert_eq!(drawn, ["a red kite", "a blue boat", "a red kite"]);
        std::fs::write(&list, "\n \n").unwrap();
        let err = check_prompts(&run, run.distill.as_ref().unwrap()).unwrap_err();
        assert!(err.to_string().contains("distill.prompts"), "{err}");
    }
}
