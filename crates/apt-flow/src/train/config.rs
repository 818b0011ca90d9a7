//! The knobs of the training loop, the same for every stage.

use serde::{Deserialize, Serialize};

use super::optim::OptimizerConfig;
use super::schedule::LrSchedule;
use super::shard::ShardMode;
use crate::error::{config_error, Result};

/// The loop's knobs (adversarial training also sets `optimizer_d`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer updates.
    pub steps: u64,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update (a larger effective batch at the same memory).
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// The optimizer of the trained model (the generator, in adversarial training) and its
    /// peak learning rate.
    pub optimizer: OptimizerConfig,
    /// The discriminator's optimizer (adversarial training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_d: Option<OptimizerConfig>,
    /// Warm-up and decay (applied to every optimizer's peak rate).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Clip each model's global gradient norm to this value.
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// EMA decay of the (generator's) weights; none when absent.
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Checkpoint every this many updates (and at the end, and on a stop).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite (half-)steps in a row.
    #[serde(default = "default_nonfinite")]
    pub max_nonfinite: usize,
    /// Fixed-seed previews every this many updates and at the end (0 = never).
    #[serde(default)]
    pub preview_every: u64,
    /// What a data-parallel run splits over its ranks ([`ShardMode`]: `none`, `optimizer`
    /// (ZeRO-1), `gradients` (ZeRO-2) or `full` (ZeRO-3)). The same updates in every mode; no
    /// effect in one process.
    #[serde(default, skip_serializing_if = "ShardMode::is_none")]
    pub shard: ShardMode,
    /// The older spelling of `shard = "optimizer"` (kept so that existing configs read).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_optimizer: bool,
    /// Activation recomputation: the trained network keeps only each block's input during the
    /// forward pass and recomputes the rest in the backward pass (less memory, about one more
    /// forward; the same gradients).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute: bool,
    /// Read the step's scalars (losses, gradient norms, the non-finite check) back to the host
    /// every this many updates, writing their `metrics.jsonl` lines then. Between reads the
    /// host never waits for the device (on a GPU, set 10–100); the non-finite check still
    /// turns a bad update into a no-op on the device at once, and a run that diverged stops
    /// at the next read. Checkpoints, previews and the last update read too.
    #[serde(
        default = "default_log_every",
        skip_serializing_if = "is_default_log_every"
    )]
    pub log_every: u64,
}

fn default_log_every() -> u64 {
    1
}
fn is_default_log_every(v: &u64) -> bool {
    *v == 1
}

fn default_grad_accum() -> usize {
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

impl TrainConfig {
    /// The sharding in effect (`shard`, or `optimizer` when the older `shard_optimizer` is set).
    pub fn shard_mode(&self) -> ShardMode {
        if self.shard_optimizer && self.shard == ShardMode::None {
            ShardMode::Optimizer
        } else {
            self.shard
        }
    }

    /// A config with the defaults for everything but the essentials.
    pub fn new(steps: u64, batch_size: usize, optimizer: OptimizerConfig) -> Self {
        Self {
            steps,
            batch_size,
            grad_accum: default_grad_accum(),
            optimizer,
            optimizer_d: None,
            schedule: LrSchedule::default(),
            clip_grad: None,
            ema_decay: None,
            checkpoint_every: default_checkpoint_every(),
            keep_checkpoints: default_keep(),
            max_nonfinite: default_nonfinite(),
            preview_every: 0,
            shard: ShardMode::None,
            shard_optimizer: false,
            recompute: false,
            log_every: default_log_every(),
        }
    }

    /// Checks every value; `key` prefixes the field names in errors (`train` gives
    /// `train.optimizer.lr`).
    pub fn validate(&self, key: &str) -> Result<()> {
        let at = |k: &str| format!("{key}.{k}");
        for (name, value) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size as u64),
            ("grad_accum", self.grad_accum as u64),
            ("checkpoint_every", self.checkpoint_every),
            ("keep_checkpoints", self.keep_checkpoints as u64),
            ("max_nonfinite", self.max_nonfinite as u64),
            ("log_every", self.log_every),
        ] {
            if value == 0 {
                return Err(config_error(&at(name), "must be at least 1"));
            }
        }
        if let Some(d) = self.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return Err(config_error(
                    &at("ema_decay"),
                    format!("must be in [0, 1), got {d}"),
                ));
            }
        }
        if let Some(c) = self.clip_grad {
            if !(c.is_finite() && c > 0.0) {
                return Err(config_error(
                    &at("clip_grad"),
                    format!("must be a positive number, got {c}"),
                ));
            }
        }
        if self.shard_optimizer && !matches!(self.shard, ShardMode::None | ShardMode::Optimizer) {
            return Err(config_error(
                &at("shard_optimizer"),
                format!(
                    "is the older spelling of shard = \"optimizer\" and contradicts shard = \"{}\": \
                     keep only `shard`",
                    self.shard
                ),
            ));
        }
        self.optimizer.validate(&at("optimizer"))?;
        if let Some(d) = &self.optimizer_d {
            d.validate(&at("optimizer_d"))?;
        }
        self.schedule.validate(&at("schedule"))
    }
}
