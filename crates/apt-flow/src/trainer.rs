//! The training loop every stage shares: gradient accumulation, the non-finite guard,
//! clipping, the learning-rate schedule, EMA, metrics, periodic atomic checkpoints, resume, and
//! a stop flag (finish the step, checkpoint, return).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{config_error, FlowError, Result};
use crate::rng::TensorRng;
use crate::run_files::MetricsLog;
use crate::train::checkpoint::{self, TrainState};
use crate::train::{
    clip_grad_norm, zero_grad, Ema, LrSchedule, NonFiniteGuard, Optimizer, OptimizerConfig,
};

/// The knobs every trainer has (a stage's `[<stage>.train]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Optimizer updates.
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Optimizer and peak learning rate.
    pub optimizer: OptimizerConfig,
    /// Warm-up and decay.
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// EMA decay of the weights (none when absent).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Checkpoint every this many updates (and at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite steps in a row.
    #[serde(default = "default_nonfinite")]
    pub max_nonfinite: usize,
}

fn one() -> usize {
    1
}
fn default_checkpoint_every() -> u64 {
    200
}
fn default_keep() -> usize {
    3
}
fn default_nonfinite() -> usize {
    10
}

impl TrainerConfig {
    /// Checks the values.
    pub fn validate(&self, stage: &str) -> Result<()> {
        let key = |k: &str| format!("{stage}.train.{k}");
        if self.steps == 0 {
            return Err(config_error(&key("steps"), "must be at least 1"));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err(config_error(
                &key("batch_size"),
                "batch_size and grad_accum must be at least 1",
            ));
        }
        if self.checkpoint_every == 0 || self.max_nonfinite == 0 {
            return Err(config_error(
                &key("checkpoint_every"),
                "checkpoint_every and max_nonfinite must be at least 1",
            ));
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return Err(config_error(
                    &key("ema_decay"),
                    format!("must be in [0, 1), got {d}"),
                ));
            }
        }
        if let Some(c) = self.clip_grad {
            if c.is_nan() || c <= 0.0 {
                return Err(config_error(
                    &key("clip_grad"),
                    format!("must be positive, got {c}"),
                ));
            }
        }
        self.optimizer.validate()
    }
}

/// What a stage optimises: the loss of one micro-batch, and where its data stream is.
pub trait Objective {
    /// The loss of the next micro-batch (drawing all randomness from `rng`).
    fn loss(&mut self, rng: &mut TensorRng) -> Result<Tensor>;
    /// The data position to save.
    fn cursor(&self) -> apt_data::Cursor;
    /// Continues the data stream from a saved position.
    fn restore(&mut self, cursor: apt_data::Cursor) -> Result<()>;
    /// Called before the first update and after every update, with the EMA weights (e.g. to
    /// refresh a target network). Does nothing by default.
    fn sync(&mut self, _ema: Option<&Ema>) -> Result<()> {
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// All steps done.
    Completed,
    /// The stop flag was raised; a checkpoint was written after the current step.
    Stopped,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricLine {
    /// Stage.
    pub stage: String,
    /// Update number (1-based).
    pub step: u64,
    /// Mean micro-batch loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-finite steps so far.
    pub skipped: u64,
    /// Seconds since the run (or resume) started.
    pub seconds: f64,
}

/// The loop's state.
pub struct Trainer {
    /// Stage name (`pretrain`, `distill`, `consistency`, …).
    pub stage: String,
    /// `<run>/<stage>`: checkpoints and metrics go here.
    pub dir: PathBuf,
    /// Knobs.
    pub config: TrainerConfig,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// EMA of the weights.
    pub ema: Option<Ema>,
    /// The run's random stream.
    pub rng: TensorRng,
    /// Non-finite counters.
    pub guard: NonFiniteGuard,
    /// Completed updates.
    pub step: u64,
    /// Raised (e.g. by Ctrl-C) to finish the current step, checkpoint and return.
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Trainer {{ stage: {}, step: {}/{} }}",
            self.stage, self.step, self.config.steps
        )
    }
}

impl Trainer {
    /// A fresh trainer for the weights in `vs`.
    pub fn new(
        stage: &str,
        dir: &Path,
        config: TrainerConfig,
        vs: &nn::VarStore,
        seed: u64,
    ) -> Result<Self> {
        config.validate(stage)?;
        Ok(Self {
            stage: stage.into(),
            dir: dir.to_path_buf(),
            optimizer: Optimizer::new(config.optimizer)?,
            ema: config.ema_decay.map(|d| Ema::new(vs, d)),
            rng: TensorRng::new(seed, 0),
            guard: NonFiniteGuard::new(config.max_nonfinite),
            step: 0,
            stop: Arc::new(AtomicBool::new(false)),
            config,
        })
    }

    /// The checkpoint directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// Restores everything from the newest intact checkpoint; `Ok(false)` when there is none.
    /// Newer checkpoints that were rejected are logged.
    pub fn resume(&mut self, vs: &nn::VarStore, objective: &mut impl Objective) -> Result<bool> {
        let Some((loaded, rejected)) = checkpoint::load_latest(&self.checkpoint_dir())? else {
            return Ok(false);
        };
        for why in rejected {
            tracing::warn!("skipping a damaged checkpoint: {why}");
        }
        let m = &loaded.manifest;
        if m.stage != self.stage {
            return Err(FlowError::File {
                path: loaded.path.clone(),
                reason: format!("written by stage {:?}, not {:?}", m.stage, self.stage),
            });
        }
        loaded.restore_model(vs)?;
        if let Some(ema) = &mut self.ema {
            ema.load_state(&loaded.tensors, "ema")?;
        }
        loaded.restore_optimizer("optimizer", &mut self.optimizer, vs)?;
        if let Some(rng) = &m.rng {
            self.rng = rng.clone();
        }
        if let Some(cursor) = m.cursor {
            objective.restore(cursor)?;
        }
        self.guard = NonFiniteGuard {
            max_consecutive: self.config.max_nonfinite,
            ..m.guard.clone()
        };
        self.step = m.step;
        tracing::info!(stage = %self.stage, step = self.step, checkpoint = %loaded.path.display(), "resumed");
        Ok(true)
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(
        &self,
        vs: &nn::VarStore,
        objective: &impl Objective,
        extra: serde_json::Value,
    ) -> Result<PathBuf> {
        let state = TrainState {
            stage: &self.stage,
            step: self.step,
            models: vec![("model", vs)],
            emas: self.ema.iter().map(|e| ("ema", e)).collect(),
            optimizers: vec![("optimizer", &self.optimizer)],
            rng: Some(&self.rng),
            cursor: Some(objective.cursor()),
            guard: &self.guard,
            extra,
        };
        checkpoint::save(&self.checkpoint_dir(), &state, self.config.keep_checkpoints)
    }

    /// Runs updates until `config.steps` (or the stop flag), calling `progress` after each.
    pub fn run(
        &mut self,
        vs: &nn::VarStore,
        objective: &mut impl Objective,
        mut progress: impl FnMut(&MetricLine),
    ) -> Result<Finish> {
        let mut metrics = MetricsLog::open(&self.dir)?;
        let start = Instant::now();
        let peak = self.config.optimizer.lr();
        objective.sync(self.ema.as_ref())?;
        while self.step < self.config.steps {
            zero_grad(vs);
            let mut total = 0.0;
            for _ in 0..self.config.grad_accum {
                let loss = objective.loss(&mut self.rng)?;
                (&loss / self.config.grad_accum as f64).backward();
                total += loss.double_value(&[]);
            }
            let loss = total / self.config.grad_accum as f64;
            let next = self.step + 1;
            let lr = self.config.schedule.lr(peak, next, self.config.steps);
            let mut grad_norm = f64::NAN;
            if self.guard.check(loss, vs, next)? {
                grad_norm = match self.config.clip_grad {
                    Some(max) => clip_grad_norm(vs, max),
                    None => clip_grad_norm(vs, f64::INFINITY),
                };
                self.optimizer.step(vs, lr);
                if let Some(ema) = &mut self.ema {
                    ema.update(vs);
                }
                objective.sync(self.ema.as_ref())?;
            }
            zero_grad(vs);
            self.step = next;
            let line = MetricLine {
                stage: self.stage.clone(),
                step: next,
                loss,
                lr,
                grad_norm,
                skipped: self.guard.skipped_total,
                seconds: start.elapsed().as_secs_f64(),
            };
            metrics.write(&line)?;
            progress(&line);
            let stopping = self.stop.load(Ordering::SeqCst);
            if next % self.config.checkpoint_every == 0 || next == self.config.steps || stopping {
                self.checkpoint(vs, objective, serde_json::json!({ "loss": loss }))?;
            }
            if stopping && next < self.config.steps {
                return Ok(Finish::Stopped);
            }
        }
        Ok(Finish::Completed)
    }
}
