//! Stage 1, rectified-flow pre-training of the teacher: the flow-matching loss
//! `‖v(x_t, t, c) − (ε − x0)‖²` at `x_t = (1 − t)·x0 + t·ε`, with the caption dropped to the
//! null caption with probability `p_uncond` so that classifier-free guidance works.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{to_training_device, CaptionEncoder, ClipSource, Cursor};
use crate::error::{config_error, Result};
use crate::flow::{
    backward_recomputed, flow_matching_loss, interpolate, velocity_target, Conditioning,
    VelocityModel,
};
use crate::rng::TensorRng;
use crate::timesteps::TimestepSampler;
use crate::train::{Shard, StepLog, TrainStep};

/// Flow-matching pre-training's settings. In a run config they sit directly under
/// `[pretrain]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowMatchingConfig {
    /// Probability of training on the null caption, so that classifier-free guidance has an
    /// unconditional model to extrapolate from (CFG dropout; default 0.1, the usual 10%).
    pub p_uncond: f64,
    /// The training-time distribution (default: `U(0, 1)` without a shift; SD3 trains on a
    /// logit-normal).
    pub timesteps: TimestepSampler,
}

impl Default for FlowMatchingConfig {
    fn default() -> Self {
        Self {
            p_uncond: 0.1,
            timesteps: TimestepSampler::default(),
        }
    }
}

impl FlowMatchingConfig {
    /// Checks `p_uncond` (in [0, 1]) and the time distribution; `key` prefixes the field names
    /// in errors.
    pub fn validate(&self, key: &str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return Err(config_error(
                &format!("{key}.p_uncond"),
                format!("must be in [0, 1], got {}", self.p_uncond),
            ));
        }
        self.timesteps.validate(&format!("{key}.timesteps"))
    }
}

/// One micro-batch of flow matching ([`flow_matching_loss`]) with CFG dropout: clips and
/// captions from `data`, text from `text`, noise and times from the loop's random stream. Logs
/// `loss`. Data parallel: the random draws are made for the whole global batch on every rank
/// and `shard` keeps its rows, so N ranks train exactly as one would.
pub struct FlowMatchingStep<'a, M> {
    /// The model being trained.
    pub model: &'a M,
    /// Training clips.
    pub data: &'a mut dyn ClipSource,
    /// Caption embeddings.
    pub text: &'a dyn CaptionEncoder,
    /// Clips per micro-batch, over all ranks (the global micro-batch).
    pub batch: usize,
    /// This rank's share of every micro-batch ([`Shard::WHOLE`] on one process).
    pub shard: Shard,
    /// Recompute activations in the backward pass (see
    /// [`VelocityModel::backward_velocity_loss`]).
    pub recompute: bool,
    /// CFG dropout and the time distribution.
    pub config: FlowMatchingConfig,
    /// Where the model lives.
    pub device: Device,
}

impl<M: VelocityModel> FlowMatchingStep<'_, M> {
    /// The next micro-batch `(x0, ε, t, conditioning)`: this rank's rows of draws made for the
    /// whole global batch.
    fn draw(&mut self, rng: &mut TensorRng) -> Result<(Tensor, Tensor, Tensor, Conditioning)> {
        let (video, captions) = self.data.next_shard(self.batch, self.shard)?;
        let shard = self.shard;
        let key = "batch_size";
        let global = captions.len() * shard.world;
        let drop = shard.items(&rng.bernoulli(global, self.config.p_uncond), key)?;
        let cond = self.text.encode(&captions, &drop)?;
        let x0 = to_training_device(&video, self.device);
        let mut shape = x0.size();
        shape[0] = global as i64;
        let eps = shard.rows(&rng.normal(&shape, self.device), key)?;
        let t = shard.rows(
            &self
                .config
                .timesteps
                .sample(global as i64, rng, self.device),
            key,
        )?;
        Ok((x0, eps, t, cond))
    }
}

impl<M: VelocityModel> TrainStep for FlowMatchingStep<'_, M> {
    fn loss(&mut self, _phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        let (x0, eps, t, cond) = self.draw(rng)?;
        let loss = flow_matching_loss(self.model, &x0, &eps, &t, &cond)?;
        log.add_tensor("loss", &loss);
        Ok(loss)
    }

    fn recomputes(&self) -> bool {
        self.recompute
    }

    fn backward_recomputed(
        &mut self,
        _phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let (x0, eps, t, cond) = self.draw(rng)?;
        let target = velocity_target(&x0, &eps);
        let value = backward_recomputed(
            self.model,
            &interpolate(&x0, &eps, &t),
            &t,
            &cond,
            accum,
            |v| (v - &target).square().mean(Kind::Float),
        )?;
        log.add_tensor("loss", &value);
        Ok(value)
    }

    fn cursor(&self) -> Cursor {
        self.data.cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.data.restore(cursor)
    }
}
