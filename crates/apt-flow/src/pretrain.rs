//! Stage 1: rectified-flow pre-training of the teacher (text dropped to the null caption with
//! probability `p_uncond` so that classifier-free guidance works), then export of the EMA
//! weights and an evaluation with the multi-step CFG sampler.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_data::shapes::Split;
use apt_mmdit::{Mmdit, MmditConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::config::RunConfig;
use crate::data::{DataConfig, TrainData};
use crate::error::{config_error, FlowError, Result};
use crate::evaluate::{shapes_alignment, AlignmentReport, EvalConfig};
use crate::flow::{flow_matching_loss, Conditioning};
use crate::rng::{with_global_seed, TensorRng};
use crate::run_files::{export_model, write_json};
use crate::sampler::{sample, Guidance};
use crate::text::TextConditioner;
use crate::timesteps::TimestepSampler;
use crate::trainer::{Finish, MetricLine, Objective, Trainer, TrainerConfig};

/// `[pretrain]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Probability of training on the null caption.
    #[serde(default = "default_p_uncond")]
    pub p_uncond: f64,
    /// Training-time distribution.
    #[serde(default)]
    pub timesteps: TimestepSampler,
    /// Fixed validation clips (moving shapes only).
    #[serde(default = "default_val")]
    pub val_clips: usize,
    /// Evaluation of the finished teacher (moving shapes only).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// The loop's knobs.
    pub train: TrainerConfig,
}

impl PretrainConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return Err(config_error(
                "pretrain.p_uncond",
                format!("must be in [0, 1], got {}", self.p_uncond),
            ));
        }
        if let Some(e) = &self.eval {
            e.validate("pretrain.eval")?;
        }
        self.timesteps.validate()?;
        self.train.validate("pretrain")
    }
}

fn default_p_uncond() -> f64 {
    0.1
}
fn default_val() -> usize {
    16
}

/// What pre-training produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainReport {
    /// Updates.
    pub steps: u64,
    /// Validation flow loss of the initial weights (fixed clips, noise and times).
    pub val_loss_start: Option<f64>,
    /// Validation flow loss of the final EMA (or raw) weights.
    pub val_loss_end: Option<f64>,
    /// Text alignment of 25-step CFG samples (moving shapes).
    pub alignment: Option<AlignmentReport>,
    /// The exported teacher weights.
    pub teacher: PathBuf,
}

/// Rectified-flow loss on the next batch, with CFG dropout.
struct FlowObjective<'a> {
    model: &'a Mmdit,
    data: Option<TrainData>,
    text: &'a TextConditioner,
    batch: usize,
    p_uncond: f64,
    timesteps: TimestepSampler,
    device: Device,
}

impl Objective for FlowObjective<'_> {
    fn loss(&mut self, rng: &mut TensorRng) -> Result<Tensor> {
        let (video, captions) = self.data.as_mut().expect("data").next_batch(self.batch)?;
        let b = captions.len();
        let drop = rng.bernoulli(b, self.p_uncond);
        let cond = self.text.batch(&captions, &drop)?;
        let x0 = video.to_device(self.device);
        let eps = rng.normal(&x0.size(), self.device);
        let t = self.timesteps.sample(b as i64, rng, self.device);
        flow_matching_loss(self.model, &x0, &eps, &t, &cond)
    }

    fn cursor(&self) -> apt_data::Cursor {
        self.data.as_ref().expect("data").cursor()
    }

    fn restore(&mut self, cursor: apt_data::Cursor) -> Result<()> {
        self.data = Some(self.data.take().expect("data").restore(cursor)?);
        Ok(())
    }
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
        let DataConfig::Shapes { shapes, seed } = &run.data else {
            return Ok(None);
        };
        if n == 0 {
            return Ok(None);
        }
        let samples: Vec<_> = (0..n as u64)
            .map(|i| shapes.sample(seed.wrapping_add(1_000_003), i, Split::Train))
            .collect::<std::result::Result<_, _>>()?;
        let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
        let x0 = Tensor::stack(
            &samples
                .iter()
                .map(|s| s.video.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        )
        .to_device(device);
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

    fn loss(&self, model: &Mmdit) -> Result<f64> {
        tch::no_grad(|| flow_matching_loss(model, &self.x0, &self.eps, &self.t, &self.cond))
            .map(|l| l.double_value(&[]))
    }
}

/// Sets libtorch's threads from the config.
pub fn apply_threads(run: &RunConfig) {
    if let Some(n) = run.threads {
        tch::set_num_threads(n as i32);
    }
}

/// Loads teacher weights (`teacher.safetensors` + `model.toml`) written by pre-training.
pub fn load_teacher(dir: &Path, device: Device) -> Result<(nn::VarStore, Mmdit, MmditConfig)> {
    let cfg = MmditConfig::from_toml_file(dir.join("model.toml"))?;
    let vs = nn::VarStore::new(device);
    let model = with_global_seed(0, || Mmdit::new(vs.root(), &cfg))?;
    apt_mmdit::load_safetensors(&vs, dir.join("teacher.safetensors"))?;
    Ok((vs, model, cfg))
}

/// Runs (or resumes) pre-training, exports the teacher and evaluates it.
pub fn run_pretrain(
    run: &RunConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    progress: impl FnMut(&MetricLine),
) -> Result<(Finish, Option<PretrainReport>)> {
    let cfg = run
        .pretrain
        .as_ref()
        .ok_or_else(|| config_error("pretrain", "section missing"))?;
    cfg.validate()?;
    apply_threads(run);
    let device = run.device()?;
    let mcfg = run.model()?;
    let vs = nn::VarStore::new(device);
    let model = with_global_seed(run.seed, || Mmdit::new(vs.root(), &mcfg))?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let dir = run.out.join("pretrain");
    let mut trainer = Trainer::new("pretrain", &dir, cfg.train.clone(), &vs, run.seed)?;
    trainer.stop = stop;
    let data = TrainData::open(&run.data, cfg.train.batch_size, run.seed)?;
    let mut objective = FlowObjective {
        model: &model,
        data: Some(data),
        text: &text,
        batch: cfg.train.batch_size,
        p_uncond: cfg.p_uncond,
        timesteps: cfg.timesteps,
        device,
    };
    let validation = Validation::new(run, cfg.val_clips, &text, device)?;
    let resumed = if resume {
        trainer.resume(&vs, &mut objective)?
    } else {
        false
    };
    if !resumed && !checkpoint_free(&trainer.checkpoint_dir()) {
        return Err(FlowError::File {
            path: trainer.checkpoint_dir(),
            reason:
                "already holds checkpoints: pass --resume to continue, or remove it to start over"
                    .into(),
        });
    }
    // The initial validation loss is measured once, on the fresh weights, and kept on disk.
    let start_file = dir.join("val_loss_start.json");
    let val_loss_start: Option<f64> = match (&validation, resumed) {
        (Some(v), false) => {
            let loss = v.loss(&model)?;
            std::fs::create_dir_all(&dir).map_err(|source| FlowError::Io {
                path: dir.clone(),
                source,
            })?;
            std::fs::write(&start_file, loss.to_string()).map_err(|source| FlowError::Io {
                path: start_file.clone(),
                source,
            })?;
            Some(loss)
        }
        _ => std::fs::read_to_string(&start_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    };
    let finish = trainer.run(&vs, &mut objective, progress)?;
    if finish == Finish::Stopped {
        return Ok((finish, None));
    }

    // Export the EMA (or raw) weights as the teacher.
    let teacher_vs = nn::VarStore::new(device);
    let teacher = with_global_seed(run.seed, || Mmdit::new(teacher_vs.root(), &mcfg))?;
    tch::no_grad(|| -> Result<()> {
        match &trainer.ema {
            Some(ema) => ema.copy_to(&teacher_vs),
            None => {
                for (k, mut v) in teacher_vs.variables() {
                    v.copy_(&vs.variables()[&k]);
                }
                Ok(())
            }
        }
    })?;
    let teacher_path = export_model(&teacher_vs, &mcfg, &dir, "teacher.safetensors")?;
    let val_loss_end = match &validation {
        Some(v) => Some(v.loss(&teacher)?),
        None => None,
    };
    let alignment = match (&cfg.eval, &run.data) {
        (Some(eval), DataConfig::Shapes { shapes, .. }) => {
            let null = text.null()?;
            Some(shapes_alignment(shapes, &text, eval, device, |z, cond| {
                let g = Guidance {
                    cond,
                    uncond: Some(&null),
                    scale: eval.sampler.cfg_scale,
                };
                sample(&teacher, z, &g, &eval.sampler)
            })?)
        }
        _ => None,
    };
    let report = PretrainReport {
        steps: trainer.step,
        val_loss_start,
        val_loss_end,
        alignment,
        teacher: teacher_path,
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok((finish, Some(report)))
}

fn checkpoint_free(dir: &Path) -> bool {
    crate::train::checkpoint::manifests(dir).is_empty()
}
