//! Stage 3, adversarial post-training (spec §5): G starts from the distilled one-step student,
//! D from the diffusion (teacher) weights with fresh heads; alternating D and G updates with the
//! non-saturating loss, λ·approximated-R1 on real data at every D step, RMSProp (α = 0.9),
//! generator EMA, gradient accumulation, the non-finite guard, fixed-seed previews, and full
//! checkpoint/resume (both models and optimizers, EMA, RNG, data cursor).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use apt_flow::data::{DataConfig, TrainData};
use apt_flow::evaluate::{shapes_alignment, AlignmentReport, EvalConfig};
use apt_flow::pretrain::{apply_threads, load_teacher};
use apt_flow::rng::with_global_seed;
use apt_flow::train::checkpoint::{self, TrainState};
use apt_flow::train::{clip_grad_norm, zero_grad, Ema, NonFiniteGuard, Optimizer, OptimizerConfig};
use apt_flow::trainer::Finish;
use apt_flow::{Conditioning, FlowError, OneStepGenerator, RunConfig, TensorRng};
use apt_mmdit::Mmdit;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::discriminator::{load_backbone, AptDiscriminator, DiscriminatorConfig};
use crate::losses::{approx_r1_penalty, bce_discriminator_loss, non_saturating_generator_loss};
use apt_flow::run_files::{export_model, write_json, MetricsLog};

type Result<T> = apt_flow::Result<T>;

fn config_error(key: &str, reason: impl Into<String>) -> FlowError {
    FlowError::Config {
        key: format!("apt.{key}"),
        reason: reason.into(),
    }
}

/// `[apt]` of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptConfig {
    /// Generator updates (each preceded by a D update).
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update (a larger effective batch).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// G's optimizer (paper: RMSProp α = 0.9, lr 5e-6 images / 3e-6 video).
    #[serde(default = "paper_rmsprop")]
    pub optimizer_g: OptimizerConfig,
    /// D's optimizer.
    #[serde(default = "paper_rmsprop")]
    pub optimizer_d: OptimizerConfig,
    /// Weight λ of the approximated R1 (paper: 100).
    #[serde(default = "hundred")]
    pub lambda_r1: f64,
    /// Its perturbation standard deviation σ (paper: 0.01 images, 0.1 video).
    #[serde(default = "sigma")]
    pub sigma: f64,
    /// Generator EMA decay (paper: 0.995).
    #[serde(default = "ema")]
    pub ema_decay: f64,
    /// Clip both models' gradient norms (the paper does not clip).
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// Which distilled student starts G: `distill` or `consistency`.
    #[serde(default = "distill")]
    pub generator_init: String,
    /// Discriminator taps and time shift.
    #[serde(default)]
    pub discriminator: DiscriminatorConfig,
    /// Checkpoint every this many updates.
    #[serde(default = "hundred_u")]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[serde(default = "three")]
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite half-steps in a row.
    #[serde(default = "ten")]
    pub max_nonfinite: usize,
    /// Fixed-seed previews every this many updates (0 = never).
    #[serde(default = "fifty")]
    pub preview_every: u64,
    /// Evaluation of the final generator (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// An image stage before this (video) stage, as in the paper: G then continues from the
    /// image stage's EMA and D restarts from the diffusion weights.
    #[serde(default)]
    pub image: Option<ImageStage>,
}

/// `[apt.image]`: the image stage's differences from the video stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStage {
    /// Generator updates.
    pub steps: u64,
    /// Frames per training clip (1 = images; must be a multiple of the temporal patch).
    #[serde(default = "one")]
    pub frames: usize,
    /// aR1's σ (paper: 0.01 for images).
    #[serde(default = "sigma")]
    pub sigma: f64,
    /// D's time shift (paper: 1 for images).
    #[serde(default = "one_f")]
    pub time_shift: f64,
}

fn one_f() -> f64 {
    1.0
}

/// What one adversarial stage trains on and where it starts.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// `apt-image` or `apt`: the directory under the run.
    pub name: &'static str,
    /// G's starting weights.
    pub generator_init: PathBuf,
    /// Training clips.
    pub data: DataConfig,
    /// This stage's settings.
    pub config: AptConfig,
}

impl StagePlan {
    /// The stages `[apt]` asks for: the optional image stage, then the video stage.
    pub fn all(run: &RunConfig, cfg: &AptConfig) -> Vec<StagePlan> {
        let student = run
            .out
            .join(&cfg.generator_init)
            .join("student.safetensors");
        let video = |init: PathBuf| StagePlan {
            name: "apt",
            generator_init: init,
            data: run.data.clone(),
            config: cfg.clone(),
        };
        match &cfg.image {
            None => vec![video(student)],
            Some(image) => {
                let mut data = run.data.clone();
                match &mut data {
                    DataConfig::Shapes { shapes, .. } => shapes.frames = image.frames,
                    DataConfig::Files { clip, .. } => clip.num_frames = image.frames,
                }
                let config = AptConfig {
                    steps: image.steps,
                    sigma: image.sigma,
                    discriminator: DiscriminatorConfig {
                        time_shift: image.time_shift,
                        ..cfg.discriminator.clone()
                    },
                    image: None,
                    ..cfg.clone()
                };
                vec![
                    StagePlan {
                        name: "apt-image",
                        generator_init: student,
                        data,
                        config,
                    },
                    video(run.out.join("apt-image").join("generator.safetensors")),
                ]
            }
        }
    }
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn ten() -> usize {
    10
}
fn fifty() -> u64 {
    50
}
fn hundred() -> f64 {
    100.0
}
fn hundred_u() -> u64 {
    100
}
fn sigma() -> f64 {
    0.01
}
fn ema() -> f64 {
    0.995
}
fn distill() -> String {
    "distill".into()
}
fn paper_rmsprop() -> OptimizerConfig {
    OptimizerConfig::Rmsprop {
        lr: 5e-6,
        alpha: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
        centered: false,
    }
}

impl AptConfig {
    /// Reads `[apt]` from a run config.
    pub fn from_run(run: &RunConfig) -> Result<Self> {
        let table = run
            .apt
            .clone()
            .ok_or_else(|| config_error("", "section missing"))?;
        let cfg: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| FlowError::Config {
                key: "apt".into(),
                reason: e.to_string().trim().replace('\n', " "),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0
            || self.batch_size == 0
            || self.grad_accum == 0
            || self.checkpoint_every == 0
            || self.max_nonfinite == 0
        {
            return Err(config_error("steps", "steps, batch_size, grad_accum, checkpoint_every and max_nonfinite must be at least 1"));
        }
        if !(self.lambda_r1.is_finite() && self.lambda_r1 >= 0.0) {
            return Err(config_error(
                "lambda_r1",
                format!("must be ≥ 0, got {}", self.lambda_r1),
            ));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(config_error(
                "sigma",
                format!("must be ≥ 0, got {}", self.sigma),
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(config_error("ema_decay", "must be in [0, 1)"));
        }
        if let Some(image) = &self.image {
            if image.steps == 0
                || image.frames == 0
                || !(image.sigma >= 0.0 && image.time_shift > 0.0)
            {
                return Err(config_error(
                    "image",
                    "needs steps ≥ 1, frames ≥ 1, σ ≥ 0 and time_shift > 0",
                ));
            }
        }
        if !["distill", "consistency"].contains(&self.generator_init.as_str()) {
            return Err(config_error(
                "generator_init",
                format!(
                    "must be \"distill\" or \"consistency\", got {:?}",
                    self.generator_init
                ),
            ));
        }
        self.optimizer_g.validate()?;
        self.optimizer_d.validate()
    }
}

/// One line of `apt/metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AptMetrics {
    /// Update number.
    pub step: u64,
    /// Mean D logit on real clips.
    pub d_real: f64,
    /// Mean D logit on generated clips.
    pub d_fake: f64,
    /// Non-saturating D loss.
    pub d_loss: f64,
    /// λ·approximated R1.
    pub ar1: f64,
    /// Non-saturating G loss.
    pub g_loss: f64,
    /// D's gradient norm.
    pub grad_norm_d: f64,
    /// G's gradient norm.
    pub grad_norm_g: f64,
    /// Non-finite half-steps so far.
    pub skipped: u64,
    /// Seconds since (re)start.
    pub seconds: f64,
}

/// The adversarial trainer's state.
pub struct AptTrainer {
    /// G's weights.
    pub vs_g: nn::VarStore,
    /// G.
    pub generator: Mmdit,
    /// D's weights.
    pub vs_d: nn::VarStore,
    /// D.
    pub discriminator: AptDiscriminator,
    text: apt_flow::text::TextConditioner,
    data: Option<TrainData>,
    cfg: AptConfig,
    opt_g: Optimizer,
    opt_d: Optimizer,
    /// G's EMA.
    pub ema: Ema,
    rng: TensorRng,
    guard: NonFiniteGuard,
    /// Completed updates.
    pub step: u64,
    device: Device,
    conds: Vec<Conditioning>,
    dir: PathBuf,
    data_config: DataConfig,
    model_config: apt_mmdit::MmditConfig,
}

impl std::fmt::Debug for AptTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AptTrainer {{ step: {}/{} }}", self.step, self.cfg.steps)
    }
}

fn mean(t: &Tensor) -> f64 {
    t.detach().mean(Kind::Float).double_value(&[])
}

impl AptTrainer {
    /// G from the plan's starting weights, D's backbone from
    /// `<run>/pretrain/teacher.safetensors` (heads fresh).
    pub fn new(run: &RunConfig, plan: &StagePlan) -> Result<Self> {
        let cfg = plan.config.clone();
        apply_threads(run);
        let device = run.device()?;
        let mcfg = run.model()?;
        let vs_g = nn::VarStore::new(device);
        let generator = with_global_seed(run.seed, || Mmdit::new(vs_g.root(), &mcfg))?;
        apt_mmdit::load_safetensors(&vs_g, &plan.generator_init).map_err(|e| FlowError::File {
            path: plan.generator_init.clone(),
            reason: format!("the stage before {} must have finished ({e})", plan.name),
        })?;
        let (teacher_vs, _teacher, _) = load_teacher(&run.out.join("pretrain"), device)?;
        let vs_d = nn::VarStore::new(device);
        let discriminator = with_global_seed(run.seed.wrapping_add(1), || {
            AptDiscriminator::new(vs_d.root(), &mcfg, &cfg.discriminator)
        })?;
        load_backbone(&vs_d, &teacher_vs)?;
        let text =
            apt_flow::text::TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
        let data = TrainData::open(&plan.data, cfg.batch_size, run.seed)?;
        Ok(Self {
            ema: Ema::new(&vs_g, cfg.ema_decay),
            opt_g: Optimizer::new(cfg.optimizer_g)?,
            opt_d: Optimizer::new(cfg.optimizer_d)?,
            guard: NonFiniteGuard::new(cfg.max_nonfinite),
            rng: TensorRng::new(run.seed, 3),
            step: 0,
            vs_g,
            generator,
            vs_d,
            discriminator,
            text,
            data: Some(data),
            device,
            conds: vec![],
            dir: run.out.join(plan.name),
            data_config: plan.data.clone(),
            model_config: mcfg.clone(),
            cfg,
        })
    }

    fn d_logits(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        Ok(self
            .discriminator
            .forward(x, t, &cond.context, &cond.pooled)?)
    }

    fn d_times(&mut self, b: i64) -> Tensor {
        let u = self.rng.uniform(&[b], self.device);
        self.discriminator.times_from_uniform(&u)
    }

    /// One D update: `softplus(−D(x)) + softplus(D(G(z)))` + λ·aR1 on the real clips (same D
    /// time and text for both aR1 branches). Changes only D's weights.
    pub fn d_step(&mut self, m: &mut AptMetrics) -> Result<()> {
        zero_grad(&self.vs_d);
        self.vs_g.freeze();
        self.conds.clear();
        let accum = self.cfg.grad_accum as f64;
        let (mut real_logit, mut fake_logit, mut d_loss, mut ar1) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..self.cfg.grad_accum {
            let (video, captions) = self
                .data
                .as_mut()
                .expect("data")
                .next_batch(self.cfg.batch_size)?;
            let real = video.to_device(self.device);
            let b = real.size()[0];
            let cond = self.text.batch(&captions, &[])?;
            let z = self.rng.normal(&real.size(), self.device);
            let fake = tch::no_grad(|| OneStepGenerator::new(&self.generator).generate(&z, &cond))?;
            let (t_real, t_fake) = (self.d_times(b), self.d_times(b));
            let l_real = self.d_logits(&real, &t_real, &cond)?;
            let l_fake = self.d_logits(&fake, &t_fake, &cond)?;
            let loss = bce_discriminator_loss(&l_real, &l_fake);
            let noise = self.rng.normal(&real.size(), self.device);
            let penalty = if self.cfg.lambda_r1 > 0.0 {
                let d = &self.discriminator;
                approx_r1_penalty(
                    |x| {
                        d.forward(x, &t_real, &cond.context, &cond.pooled)
                            .expect("shapes checked above")
                    },
                    &real,
                    self.cfg.lambda_r1,
                    self.cfg.sigma,
                    &noise,
                )
            } else {
                Tensor::zeros([], (Kind::Float, self.device))
            };
            ((&loss + &penalty) / accum).backward();
            real_logit += mean(&l_real) / accum;
            fake_logit += mean(&l_fake) / accum;
            d_loss += loss.double_value(&[]) / accum;
            ar1 += penalty.double_value(&[]) / accum;
            self.conds.push(cond);
        }
        self.vs_g.unfreeze();
        (m.d_real, m.d_fake, m.d_loss, m.ar1) = (real_logit, fake_logit, d_loss, ar1);
        if self.guard.check(d_loss + ar1, &self.vs_d, self.step + 1)? {
            m.grad_norm_d = clip_grad_norm(&self.vs_d, self.cfg.clip_grad.unwrap_or(f64::INFINITY));
            self.opt_d.step(&self.vs_d, self.cfg.optimizer_d.lr());
        }
        zero_grad(&self.vs_d);
        Ok(())
    }

    /// One G update: `softplus(−D(G(z)))` on the captions of the last D step with fresh noise
    /// and D times; D is frozen. Changes only G's weights (and its EMA).
    pub fn g_step(&mut self, m: &mut AptMetrics) -> Result<()> {
        zero_grad(&self.vs_g);
        self.vs_d.freeze();
        let accum = self.conds.len().max(1) as f64;
        let mut g_loss = 0.0;
        let conds: Vec<Conditioning> = self.conds.iter().map(Conditioning::shallow_clone).collect();
        let shape = TrainData::clip_shape(&self.data_config);
        for cond in &conds {
            let b = cond.batch();
            let z = self
                .rng
                .normal(&[b, shape[0], shape[1], shape[2], shape[3]], self.device);
            let fake = OneStepGenerator::new(&self.generator).generate(&z, cond)?;
            let t = self.d_times(b);
            let loss = non_saturating_generator_loss(&self.d_logits(&fake, &t, cond)?);
            (&loss / accum).backward();
            g_loss += loss.double_value(&[]) / accum;
        }
        self.vs_d.unfreeze();
        m.g_loss = g_loss;
        if self.guard.check(g_loss, &self.vs_g, self.step + 1)? {
            m.grad_norm_g = clip_grad_norm(&self.vs_g, self.cfg.clip_grad.unwrap_or(f64::INFINITY));
            self.opt_g.step(&self.vs_g, self.cfg.optimizer_g.lr());
            self.ema.update(&self.vs_g);
        }
        zero_grad(&self.vs_g);
        Ok(())
    }

    fn checkpoint(&self) -> Result<PathBuf> {
        let state = TrainState {
            stage: "apt",
            step: self.step,
            models: vec![("generator", &self.vs_g), ("discriminator", &self.vs_d)],
            emas: vec![("ema", &self.ema)],
            optimizers: vec![("optimizer_g", &self.opt_g), ("optimizer_d", &self.opt_d)],
            rng: Some(&self.rng),
            cursor: Some(self.data.as_ref().expect("data").cursor()),
            guard: &self.guard,
            extra: serde_json::Value::Null,
        };
        checkpoint::save(
            &self.dir.join("checkpoints"),
            &state,
            self.cfg.keep_checkpoints,
        )
    }

    /// Restores everything from the newest intact checkpoint; `Ok(false)` when there is none.
    pub fn resume(&mut self) -> Result<bool> {
        let Some((loaded, rejected)) = checkpoint::load_latest(&self.dir.join("checkpoints"))?
        else {
            return Ok(false);
        };
        for why in rejected {
            tracing::warn!("skipping a damaged checkpoint: {why}");
        }
        loaded.restore_weights("generator", &self.vs_g)?;
        loaded.restore_weights("discriminator", &self.vs_d)?;
        self.ema.load_state(&loaded.tensors, "ema")?;
        loaded.restore_optimizer("optimizer_g", &mut self.opt_g, &self.vs_g)?;
        loaded.restore_optimizer("optimizer_d", &mut self.opt_d, &self.vs_d)?;
        let m = &loaded.manifest;
        if let Some(rng) = &m.rng {
            self.rng = rng.clone();
        }
        if let Some(cursor) = m.cursor {
            self.data = Some(self.data.take().expect("data").restore(cursor)?);
        }
        self.guard = NonFiniteGuard {
            max_consecutive: self.cfg.max_nonfinite,
            ..m.guard.clone()
        };
        self.step = m.step;
        Ok(true)
    }

    /// The EMA generator as a separate model (for previews, export and evaluation).
    pub fn ema_generator(&self, mcfg: &apt_mmdit::MmditConfig) -> Result<(nn::VarStore, Mmdit)> {
        let vs = nn::VarStore::new(self.device);
        let g = with_global_seed(0, || Mmdit::new(vs.root(), mcfg))?;
        self.ema.copy_to(&vs)?;
        Ok((vs, g))
    }

    /// Runs updates until the configured steps (or `stop`), with previews and checkpoints.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut progress: impl FnMut(&AptMetrics),
    ) -> Result<Finish> {
        let mut metrics = MetricsLog::open(&self.dir)?;
        let start = Instant::now();
        while self.step < self.cfg.steps {
            let mut m = AptMetrics {
                step: self.step + 1,
                grad_norm_d: f64::NAN,
                grad_norm_g: f64::NAN,
                ..Default::default()
            };
            self.d_step(&mut m)?;
            self.g_step(&mut m)?;
            self.step += 1;
            m.skipped = self.guard.skipped_total;
            m.seconds = start.elapsed().as_secs_f64();
            metrics.write(&m)?;
            progress(&m);
            if self.cfg.preview_every > 0
                && (self.step % self.cfg.preview_every == 0 || self.step == self.cfg.steps)
            {
                self.preview()?;
            }
            let stopping = stop.load(Ordering::SeqCst);
            if self.step % self.cfg.checkpoint_every == 0 || self.step == self.cfg.steps || stopping
            {
                self.checkpoint()?;
            }
            if stopping && self.step < self.cfg.steps {
                return Ok(Finish::Stopped);
            }
        }
        Ok(Finish::Completed)
    }

    /// One-step samples of the EMA generator for fixed prompts and noise, as a PNG grid.
    fn preview(&self) -> Result<()> {
        let DataConfig::Shapes { shapes, .. } = &self.data_config else {
            return Ok(());
        };
        let (_vs, g) = self.ema_generator(&self.model_config)?;
        let captions: Vec<String> = (0..4u64)
            .map(|i| {
                shapes
                    .draw(4242, i, apt_data::shapes::Split::All)
                    .map(|s| shapes.caption(&s))
            })
            .collect::<std::result::Result<_, _>>()?;
        let cond = self.text.batch(&captions, &[])?;
        let shape = TrainData::clip_shape(&self.data_config);
        let z = TensorRng::seeded_normal(
            4242,
            &[4, shape[0], shape[1], shape[2], shape[3]],
            self.device,
        );
        let clips =
            tch::no_grad(|| OneStepGenerator::new(&g).generate(&z, &cond))?.clamp(-1.0, 1.0);
        // Clips side by side along the width, frames along the grid.
        let strip = Tensor::cat(&(0..4).map(|i| clips.get(i)).collect::<Vec<_>>(), 3);
        let path = self
            .dir
            .join("previews")
            .join(format!("step-{:06}.png", self.step));
        std::fs::create_dir_all(path.parent().expect("dir")).map_err(|source| FlowError::Io {
            path: path.clone(),
            source,
        })?;
        apt_data::write_video(&path, &strip, 8.0)?;
        Ok(())
    }
}

/// What adversarial post-training produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AptReport {
    /// Updates.
    pub steps: u64,
    /// The distilled student's one-step alignment and sharpness (G's starting point).
    pub initial: Option<AlignmentReport>,
    /// The APT generator's (EMA) one-step alignment and sharpness.
    pub one_step: Option<AlignmentReport>,
    /// … zero-shot two-step.
    pub two_step: Option<AlignmentReport>,
    /// Exported generator weights.
    pub generator: PathBuf,
}

/// Runs (or resumes) adversarial post-training: the optional image stage, then the video
/// stage; each exports its EMA generator, is evaluated and writes a report. A finished image
/// stage is skipped when resuming.
pub fn run_apt(
    run: &RunConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    mut progress: impl FnMut(&AptMetrics),
) -> Result<(Finish, Option<AptReport>)> {
    let cfg = AptConfig::from_run(run)?;
    let plans = StagePlan::all(run, &cfg);
    let mut last = (Finish::Completed, None);
    for plan in &plans {
        let done = run.out.join(plan.name).join("report.json");
        if resume && plan.name != "apt" && done.is_file() {
            tracing::info!(
                stage = plan.name,
                "already finished; continuing with the next stage"
            );
            continue;
        }
        last = run_stage(run, plan, resume, &stop, &mut progress)?;
        if last.0 == Finish::Stopped {
            break;
        }
    }
    Ok(last)
}

fn run_stage(
    run: &RunConfig,
    plan: &StagePlan,
    resume: bool,
    stop: &AtomicBool,
    progress: impl FnMut(&AptMetrics),
) -> Result<(Finish, Option<AptReport>)> {
    let cfg = &plan.config;
    let mut trainer = AptTrainer::new(run, plan)?;
    let dir = run.out.join(plan.name);
    let mcfg = run.model()?;
    let initial = match (&cfg.eval, &plan.data) {
        (Some(eval), DataConfig::Shapes { shapes, .. }) if !resume || trainer.step == 0 => {
            let g = OneStepGenerator::new(&trainer.generator);
            Some(shapes_alignment(
                shapes,
                &trainer.text,
                eval,
                trainer.device,
                |z, c| g.generate(z, c),
            )?)
        }
        _ => None,
    };
    let resumed = if resume { trainer.resume()? } else { false };
    if !resumed && !checkpoint::manifests(&dir.join("checkpoints")).is_empty() {
        return Err(FlowError::File {
            path: dir.join("checkpoints"),
            reason:
                "already holds checkpoints: pass --resume to continue, or remove it to start over"
                    .into(),
        });
    }
    let initial_file = dir.join("initial.json");
    let initial = match initial {
        Some(r) if !resumed => {
            std::fs::create_dir_all(&dir).map_err(|source| FlowError::Io {
                path: dir.clone(),
                source,
            })?;
            std::fs::write(
                &initial_file,
                serde_json::to_string(&r).expect("serialisable"),
            )
            .map_err(|source| FlowError::Io {
                path: initial_file.clone(),
                source,
            })?;
            Some(r)
        }
        _ => std::fs::read_to_string(&initial_file)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok()),
    };
    let finish = trainer.run(stop, progress)?;
    if finish == Finish::Stopped {
        return Ok((finish, None));
    }
    let (ema_vs, g) = trainer.ema_generator(&mcfg)?;
    let path = export_model(&ema_vs, &mcfg, &dir, "generator.safetensors")?;
    let generator = OneStepGenerator::new(&g);
    let (one_step, two_step) = match (&cfg.eval, &plan.data) {
        (Some(eval), DataConfig::Shapes { shapes, .. }) => (
            Some(shapes_alignment(
                shapes,
                &trainer.text,
                eval,
                trainer.device,
                |z, c| generator.generate(z, c),
            )?),
            Some(shapes_alignment(
                shapes,
                &trainer.text,
                eval,
                trainer.device,
                |z, c| generator.generate_steps(z, c, 2),
            )?),
        ),
        _ => (None, None),
    };
    let report = AptReport {
        steps: trainer.step,
        initial,
        one_step,
        two_step,
        generator: path,
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok((finish, Some(report)))
}
