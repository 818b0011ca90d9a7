//! Stage 2: distilling the multi-step CFG teacher into a one-step generator.
//!
//! * **Deterministic** (the seed article's method): the teacher's N-step CFG sampler maps noise
//!   and caption `(z, c)` to `x_teacher`; pairs are stored as safetensors shards (resumable,
//!   deterministic per shard); the student starts from the teacher's weights and learns
//!   `z − Ĝ(z, c, 1) ≈ x_teacher` (MSE).
//! * **Consistency** (the paper's method): the student is an x0-predictor
//!   `f(x_t, t) = x_t − t·v(x_t, t)` (so `f(x, 0) = x`); the target comes from one teacher CFG
//!   Euler step `t_{n+1} → t_n` followed by the stop-gradient (or EMA) student at `t_n`, on a
//!   shifted grid of N points; MSE.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_data::Cursor;
use apt_mmdit::Mmdit;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::data::{DataConfig, TrainData};
use crate::error::{config_error, FlowError, Result};
use crate::evaluate::{shapes_alignment, AlignmentReport, EvalConfig};
use crate::flow::{interpolate, per_sample, predict_x0, Conditioning, VelocityModel};
use crate::onestep::OneStepGenerator;
use crate::pretrain::{apply_threads, load_teacher};
use crate::rng::{with_global_seed, TensorRng};
use crate::run_files::{export_model, write_json};
use crate::sampler::{sample, time_grid, Guidance, SamplerConfig};
use crate::text::TextConditioner;
use crate::trainer::{Finish, MetricLine, Objective, Trainer, TrainerConfig};

/// `[distill]`: deterministic distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher's sampler for the pairs (default: 25 Euler steps).
    pub teacher: SamplerConfig,
    /// Number of `(z, c) → x_teacher` pairs.
    pub pairs: usize,
    /// Pairs per shard file.
    #[serde(default = "default_shard")]
    pub shard_size: usize,
    /// One-step evaluation (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// The loop's knobs.
    pub train: TrainerConfig,
}

impl DistillConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.pairs == 0 || self.shard_size == 0 {
            return Err(config_error(
                "distill.pairs",
                "pairs and shard_size must be at least 1",
            ));
        }
        self.teacher.validate()?;
        if let Some(e) = &self.eval {
            e.validate("distill.eval")?;
        }
        self.train.validate("distill")
    }
}

impl ConsistencyConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.points < 2 {
            return Err(config_error(
                "consistency.points",
                format!("must be at least 2, got {}", self.points),
            ));
        }
        if !(self.shift > 0.0 && self.cfg_scale.is_finite()) {
            return Err(config_error(
                "consistency.shift",
                "shift must be positive and cfg_scale finite",
            ));
        }
        if self.target == ConsistencyTarget::Ema && self.train.ema_decay.is_none() {
            return Err(config_error(
                "consistency.target",
                "\"ema\" needs consistency.train.ema_decay",
            ));
        }
        if let Some(e) = &self.eval {
            e.validate("consistency.eval")?;
        }
        self.train.validate("consistency")
    }
}

fn default_shard() -> usize {
    256
}

/// Which network gives the consistency target at `t_n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyTarget {
    /// The current student without gradient.
    #[default]
    StopGradient,
    /// The EMA of the student (needs `train.ema_decay`).
    Ema,
}

/// `[consistency]`: consistency distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// Discretisation points N.
    #[serde(default = "default_points")]
    pub points: usize,
    /// Shift of the discretisation grid.
    #[serde(default = "one")]
    pub shift: f64,
    /// The teacher's constant CFG scale.
    pub cfg_scale: f64,
    /// Target network.
    #[serde(default)]
    pub target: ConsistencyTarget,
    /// One-step evaluation (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// The loop's knobs.
    pub train: TrainerConfig,
}

fn default_points() -> usize {
    32
}
fn one() -> f64 {
    1.0
}

/// What a distillation stage produced.
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
}

/// Teacher pairs in memory.
#[derive(Debug)]
pub struct Pairs {
    /// Noise `[P, C, T, H, W]`.
    pub z: Tensor,
    /// Teacher samples.
    pub x: Tensor,
    /// Conditioning `[P, L, D]`, `[P, D]`.
    pub cond: Conditioning,
}

/// Generates (or completes) the pair shards in `dir` and loads them. Shard `k` is a pure
/// function of `(seed, k)` and the configs, so an interrupted generation resumes where it
/// stopped and reproduces the same pairs.
pub fn generate_pairs(
    run: &RunConfig,
    cfg: &DistillConfig,
    teacher: &Mmdit,
    text: &TextConditioner,
    dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Pairs> {
    let DataConfig::Shapes {
        shapes,
        seed: data_seed,
    } = &run.data
    else {
        return Err(config_error(
            "data",
            "deterministic distillation draws its prompts from the moving-shapes benchmark",
        ));
    };
    cfg.teacher.validate()?;
    std::fs::create_dir_all(dir).map_err(|source| FlowError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let device = run.device()?;
    let null = text.null()?;
    let shards = cfg.pairs.div_ceil(cfg.shard_size.max(1));
    let shape = TrainData::clip_shape(&run.data);
    let (mut zs, mut xs, mut contexts, mut pooled) = (vec![], vec![], vec![], vec![]);
    for k in 0..shards {
        let path = dir.join(format!("shard-{k:05}.safetensors"));
        let n = cfg.shard_size.min(cfg.pairs - k * cfg.shard_size);
        if !path.is_file() {
            let first = (k * cfg.shard_size) as u64;
            let captions: Vec<String> = (first..first + n as u64)
                .map(|i| {
                    shapes
                        .draw(
                            data_seed.wrapping_add(2_000_003),
                            i,
                            apt_data::shapes::Split::Train,
                        )
                        .map(|s| shapes.caption(&s))
                })
                .collect::<std::result::Result<_, _>>()?;
            let cond = text.batch(&captions, &[])?;
            let z = TensorRng::new(run.seed, 1_000 + k as u64)
                .normal(&[n as i64, shape[0], shape[1], shape[2], shape[3]], device);
            let g = Guidance {
                cond: &cond,
                uncond: Some(&null),
                scale: cfg.teacher.cfg_scale,
            };
            let x = sample(teacher, &z, &g, &cfg.teacher)?;
            let tensors = [
                ("z", z.to_device(Device::Cpu)),
                ("x", x.to_device(Device::Cpu)),
                ("context", cond.context.to_device(Device::Cpu)),
                ("pooled", cond.pooled.to_device(Device::Cpu)),
            ];
            apt_mmdit::weights::write_atomically(&path, |tmp| {
                Tensor::write_safetensors(&tensors, tmp).map_err(apt_mmdit::MmditError::from)
            })?;
        }
        let read: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(|e| FlowError::File {
                path: path.clone(),
                reason: format!("unreadable pair shard ({e}); delete it to regenerate"),
            })?
            .into_iter()
            .collect();
        for (key, list) in [
            ("z", &mut zs),
            ("x", &mut xs),
            ("context", &mut contexts),
            ("pooled", &mut pooled),
        ] {
            let t = read.get(key).ok_or_else(|| FlowError::File {
                path: path.clone(),
                reason: format!("missing `{key}`; delete it to regenerate"),
            })?;
            if t.size()[0] != n as i64 {
                return Err(FlowError::File {
                    path: path.clone(),
                    reason: format!(
                        "holds {} pairs, expected {n}; delete it to regenerate",
                        t.size()[0]
                    ),
                });
            }
            list.push(t.shallow_clone());
        }
        progress(k + 1, shards);
    }
    Ok(Pairs {
        z: Tensor::cat(&zs, 0).to_device(device),
        x: Tensor::cat(&xs, 0).to_device(device),
        cond: Conditioning {
            context: Tensor::cat(&contexts, 0).to_device(device),
            pooled: Tensor::cat(&pooled, 0).to_device(device),
        },
    })
}

/// `MSE(z − Ĝ(z, c, 1), x_teacher)` over shuffled pairs.
struct PairObjective<'a> {
    student: &'a Mmdit,
    pairs: &'a Pairs,
    batch: usize,
    seed: u64,
    cursor: Cursor,
    order: Vec<i64>,
}

impl PairObjective<'_> {
    fn order(&self, epoch: u64) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.pairs.z.size()[0]).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ 0x0d15_7111);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
        order
    }
}

impl Objective for PairObjective<'_> {
    fn loss(&mut self, _rng: &mut TensorRng) -> Result<Tensor> {
        if self.cursor.position + self.batch > self.order.len() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
            self.order = self.order(self.cursor.epoch);
        }
        let idx = Tensor::from_slice(
            &self.order[self.cursor.position..self.cursor.position + self.batch],
        )
        .to_device(self.pairs.z.device());
        self.cursor.position += self.batch;
        let z = self.pairs.z.index_select(0, &idx);
        let cond = Conditioning {
            context: self.pairs.cond.context.index_select(0, &idx),
            pooled: self.pairs.cond.pooled.index_select(0, &idx),
        };
        let x = OneStepGenerator::new(self.student).generate(&z, &cond)?;
        Ok((x - self.pairs.x.index_select(0, &idx))
            .square()
            .mean(Kind::Float))
    }

    fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.order = self.order(cursor.epoch);
        self.cursor = cursor;
        Ok(())
    }
}

/// The consistency-distillation loss on the next data batch.
struct ConsistencyObjective<'a> {
    student: &'a Mmdit,
    teacher: &'a Mmdit,
    target: Option<(&'a Mmdit, &'a nn::VarStore)>,
    data: Option<TrainData>,
    text: &'a TextConditioner,
    null: Conditioning,
    grid: Vec<f64>,
    cfg_scale: f64,
    batch: usize,
    device: Device,
}

impl Objective for ConsistencyObjective<'_> {
    fn loss(&mut self, rng: &mut TensorRng) -> Result<Tensor> {
        let (video, captions) = self.data.as_mut().expect("data").next_batch(self.batch)?;
        let x0 = video.to_device(self.device);
        let b = captions.len();
        let cond = self.text.batch(&captions, &[])?;
        // n uniform in {0, …, N-1}: the pair (t_{n+1}, t_n) on the ascending grid.
        let points = self.grid.len() - 1;
        let n: Vec<usize> = (0..b)
            .map(|_| ((rng.unit() * points as f64) as usize).min(points - 1))
            .collect();
        let t_hi = Tensor::from_slice(
            &n.iter()
                .map(|&i| self.grid[i + 1] as f32)
                .collect::<Vec<_>>(),
        )
        .to_device(self.device);
        let t_lo = Tensor::from_slice(&n.iter().map(|&i| self.grid[i] as f32).collect::<Vec<_>>())
            .to_device(self.device);
        let eps = rng.normal(&x0.size(), self.device);
        let x_hi = interpolate(&x0, &eps, &t_hi);
        let target = tch::no_grad(|| -> Result<Tensor> {
            // One teacher CFG Euler step t_{n+1} → t_n, per sample.
            let both =
                Conditioning::cat(&cond, &self.null.expand_to(b as i64)).expect("same token count");
            let v = self.teacher.velocity(
                &Tensor::cat(&[&x_hi, &x_hi], 0),
                &Tensor::cat(&[&t_hi, &t_hi], 0),
                &both,
            )?;
            let (vc, vu) = (v.narrow(0, 0, b as i64), v.narrow(0, b as i64, b as i64));
            let v_cfg = &vu + (vc - &vu) * self.cfg_scale;
            let x_lo = &x_hi + per_sample(&(&t_lo - &t_hi), &x_hi) * v_cfg;
            let net = self.target.map(|(m, _)| m).unwrap_or(self.student);
            Ok(predict_x0(
                &x_lo,
                &t_lo,
                &net.velocity(&x_lo, &t_lo, &cond)?,
            ))
        })?;
        let f = predict_x0(&x_hi, &t_hi, &self.student.velocity(&x_hi, &t_hi, &cond)?);
        Ok((f - target).square().mean(Kind::Float))
    }

    fn cursor(&self) -> Cursor {
        self.data.as_ref().expect("data").cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.data = Some(self.data.take().expect("data").restore(cursor)?);
        Ok(())
    }

    fn sync(&mut self, ema: Option<&crate::train::Ema>) -> Result<()> {
        if let (Some((_, target_vs)), Some(ema)) = (self.target, ema) {
            ema.copy_to(target_vs)?;
        }
        Ok(())
    }
}

fn copy_weights(from: &nn::VarStore, to: &nn::VarStore) {
    tch::no_grad(|| {
        let src = from.variables();
        for (k, mut v) in to.variables() {
            v.copy_(&src[&k]);
        }
    });
}

/// Exports the student (EMA if any), evaluates one- and two-step generation, writes the report.
fn finish_student(
    run: &RunConfig,
    dir: &Path,
    trainer: &Trainer,
    vs: &nn::VarStore,
    eval: Option<&EvalConfig>,
    text: &TextConditioner,
) -> Result<DistillReport> {
    let device = run.device()?;
    let mcfg = run.model()?;
    let out_vs = nn::VarStore::new(device);
    let student = with_global_seed(run.seed, || Mmdit::new(out_vs.root(), &mcfg))?;
    match &trainer.ema {
        Some(ema) => ema.copy_to(&out_vs)?,
        None => copy_weights(vs, &out_vs),
    }
    let path = export_model(&out_vs, &mcfg, dir, "student.safetensors")?;
    let generator = OneStepGenerator::new(&student);
    let (one_step, two_step) = match (eval, &run.data) {
        (Some(eval), DataConfig::Shapes { shapes, .. }) => (
            Some(shapes_alignment(shapes, text, eval, device, |z, c| {
                generator.generate(z, c)
            })?),
            Some(shapes_alignment(shapes, text, eval, device, |z, c| {
                generator.generate_steps(z, c, 2)
            })?),
        ),
        _ => (None, None),
    };
    let losses: Vec<f64> = std::fs::read_to_string(trainer.dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<crate::trainer::MetricLine>(l).ok())
        .map(|m| m.loss)
        .collect();
    let tail = &losses[losses.len() - (losses.len() / 10).max(1).min(losses.len())..];
    let report = DistillReport {
        steps: trainer.step,
        final_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        one_step,
        two_step,
        student: path,
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok(report)
}

fn student_from_teacher(
    run: &RunConfig,
    device: Device,
) -> Result<(nn::VarStore, Mmdit, nn::VarStore, Mmdit)> {
    let (teacher_vs, teacher, tcfg) = load_teacher(&run.out.join("pretrain"), device)?;
    if tcfg != run.model()? {
        return Err(config_error(
            "model",
            "differs from the pre-trained teacher's model.toml",
        ));
    }
    let vs = nn::VarStore::new(device);
    let student = with_global_seed(run.seed, || Mmdit::new(vs.root(), &tcfg))?;
    copy_weights(&teacher_vs, &vs);
    Ok((vs, student, teacher_vs, teacher))
}

/// Deterministic distillation: pairs (resumable), then the student (resumable).
pub fn run_distill(
    run: &RunConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    pair_progress: impl FnMut(usize, usize),
    progress: impl FnMut(&MetricLine),
) -> Result<(Finish, Option<DistillReport>)> {
    let cfg = run
        .distill
        .as_ref()
        .ok_or_else(|| config_error("distill", "section missing"))?;
    apply_threads(run);
    let device = run.device()?;
    let (vs, student, _teacher_vs, teacher) = student_from_teacher(run, device)?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let dir = run.out.join("distill");
    let pairs = generate_pairs(run, cfg, &teacher, &text, &dir.join("pairs"), pair_progress)?;
    if (pairs.z.size()[0] as usize) < cfg.train.batch_size {
        return Err(config_error(
            "distill.pairs",
            "must be at least the batch size",
        ));
    }
    let mut trainer = Trainer::new("distill", &dir, cfg.train.clone(), &vs, run.seed)?;
    trainer.stop = stop;
    let mut objective = PairObjective {
        student: &student,
        pairs: &pairs,
        batch: cfg.train.batch_size,
        seed: run.seed,
        cursor: Cursor::default(),
        order: vec![],
    };
    objective.restore(Cursor::default())?;
    start_or_resume(&mut trainer, &vs, &mut objective, resume)?;
    let finish = trainer.run(&vs, &mut objective, progress)?;
    if finish == Finish::Stopped {
        return Ok((finish, None));
    }
    Ok((
        finish,
        Some(finish_student(
            run,
            &dir,
            &trainer,
            &vs,
            cfg.eval.as_ref(),
            &text,
        )?),
    ))
}

/// Consistency distillation on the training data.
pub fn run_consistency(
    run: &RunConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(&MetricLine),
) -> Result<(Finish, Option<DistillReport>)> {
    let cfg = run
        .consistency
        .as_ref()
        .ok_or_else(|| config_error("consistency", "section missing"))?;
    cfg.validate()?;
    apply_threads(run);
    let device = run.device()?;
    let (vs, student, _teacher_vs, teacher) = student_from_teacher(run, device)?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let dir = run.out.join("consistency");
    let mut trainer = Trainer::new("consistency", &dir, cfg.train.clone(), &vs, run.seed)?;
    trainer.stop = stop;
    let target_vs = nn::VarStore::new(device);
    let mcfg = run.model()?;
    let target_model = with_global_seed(run.seed, || Mmdit::new(target_vs.root(), &mcfg))?;
    let mut grid = time_grid(cfg.points, cfg.shift);
    grid.reverse(); // ascending: t_0 = 0 … t_N = 1
    let mut objective = ConsistencyObjective {
        student: &student,
        teacher: &teacher,
        target: None,
        data: Some(TrainData::open(&run.data, cfg.train.batch_size, run.seed)?),
        text: &text,
        null: text.null()?,
        grid,
        cfg_scale: cfg.cfg_scale,
        batch: cfg.train.batch_size,
        device,
    };
    if cfg.target == ConsistencyTarget::Ema {
        objective.target = Some((&target_model, &target_vs));
    }
    start_or_resume(&mut trainer, &vs, &mut objective, resume)?;
    let finish = trainer.run(&vs, &mut objective, progress)?;
    if finish == Finish::Stopped {
        return Ok((finish, None));
    }
    Ok((
        finish,
        Some(finish_student(
            run,
            &dir,
            &trainer,
            &vs,
            cfg.eval.as_ref(),
            &text,
        )?),
    ))
}

fn start_or_resume(
    trainer: &mut Trainer,
    vs: &nn::VarStore,
    objective: &mut impl Objective,
    resume: bool,
) -> Result<()> {
    let resumed = if resume {
        trainer.resume(vs, objective)?
    } else {
        false
    };
    if !resumed && !crate::train::checkpoint::manifests(&trainer.checkpoint_dir()).is_empty() {
        return Err(FlowError::File {
            path: trainer.checkpoint_dir(),
            reason:
                "already holds checkpoints: pass --resume to continue, or remove it to start over"
                    .into(),
        });
    }
    Ok(())
}
