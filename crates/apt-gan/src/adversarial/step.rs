//! One adversarial update as a [`TrainStep`] with two phases: D, then G.

use apt_flow::data::{to_training_device, CaptionEncoder, ClipSource, Cursor};
use apt_flow::train::{Shard, StepLog, TrainStep};
use apt_flow::{Conditioning, OneStepGenerator, Result, TensorRng, VelocityModel};
use tch::{Device, Kind, Tensor};

use super::config::{AdversarialConfig, AdversarialLoss};
use crate::discriminator::AptDiscriminator;
use crate::losses::{
    bce_discriminator_loss, hinge_discriminator_loss, hinge_generator_loss,
    non_saturating_generator_loss, relativistic_discriminator_loss, relativistic_generator_loss,
};

/// Index of the generator among the loop's parts (its name is `generator`).
pub const GENERATOR: usize = 0;
/// Index of the discriminator among the loop's parts (its name is `discriminator`).
pub const DISCRIMINATOR: usize = 1;

/// The D and G phases of one APT update.
///
/// * D phase (`d_steps` of them), per micro-batch: real clips `x` and captions `c`;
///   `x̂ = z − Ĝ(z, c, 1)` without gradient; `t_r, t_f` from D's time distribution per sample;
///   the loss (non-saturating by default) `softplus(−D(x, t_r, c)) + softplus(D(x̂, t_f, c))`
///   plus `λ·(D(x, t_r, c) − D(x + σε, t_r, c))²` — the first term's `D(x, t_r, c)` reused as
///   the clean branch — and, if `lambda_r2 > 0`, the same on `x̂`. Every clip passes through the
///   batch's [`InputDraw`](super::InputDraw) first (same draw for a clip and its perturbed copy). Logs `d_real`,
///   `d_fake` (mean logits), `d_loss`, `ar1`, `ar2` (λ included; the last D step's values).
/// * G phase, per micro-batch: the captions of the D phase's micro-batches, fresh `z`, D times
///   and input draw; the loss `softplus(−D(z − Ĝ(z, c, 1), t, c))` (or the configured pair's G
///   side). Logs `g_loss`.
///
/// Data parallel ([`with_shard`](Self::with_shard)): every random draw (z, D times, input
/// draws, the penalties' ε) is made for the whole global micro-batch and the rank keeps its
/// rows, so N ranks take the same update as one process with the same global batch.
/// Recomputation ([`with_recompute`](Self::with_recompute)) is a mode of the same phases.
pub struct AdversarialStep<'a, G> {
    pub(super) generator: &'a G,
    pub(super) discriminator: &'a AptDiscriminator,
    pub(super) config: AdversarialConfig,
    pub(super) data: &'a mut dyn ClipSource,
    pub(super) text: &'a dyn CaptionEncoder,
    pub(super) batch: usize,
    pub(super) shard: Shard,
    pub(super) recompute: bool,
    pub(super) device: Device,
    /// Conditioning (and real clips, for the relativistic loss) of the last D phases'
    /// micro-batches, reused by the G phase.
    pub(super) batches: Vec<(Conditioning, Option<Tensor>)>,
    /// Which G micro-batch comes next.
    pub(super) next_g: usize,
}

/// How a phase computes its micro-batch's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Plain forward: returns the loss with its graph.
    Forward,
    /// Recomputed activations: back-propagates `loss / accum` itself, returns the loss value.
    Recompute {
        /// Micro-batches per update.
        accum: usize,
    },
}

/// One D micro-batch as D sees it (see [`AdversarialStep::d_batch`]).
pub(super) struct DBatch {
    /// Real clips `[B, C, T, H, W]`.
    pub real: Tensor,
    /// Their captions' conditioning.
    pub cond: Conditioning,
    /// D times of the real and the fake clips `[B]`.
    pub t_real: Tensor,
    pub t_fake: Tensor,
    /// Real and fake clips after the input draw.
    pub x_real: Tensor,
    pub x_fake: Tensor,
}

/// D's loss of the configured pair: non-saturating BCE, relativistic or hinge.
pub(super) fn discriminator_loss(
    kind: AdversarialLoss,
    l_real: &Tensor,
    l_fake: &Tensor,
) -> Tensor {
    match kind {
        AdversarialLoss::NonSaturating => bce_discriminator_loss(l_real, l_fake),
        AdversarialLoss::Relativistic => relativistic_discriminator_loss(l_real, l_fake),
        AdversarialLoss::Hinge => hinge_discriminator_loss(l_real, l_fake),
    }
}

/// G's side of the configured pair (the relativistic loss needs D's logits on real clips).
pub(super) fn generator_loss(
    kind: AdversarialLoss,
    l_real: Option<&Tensor>,
    l_fake: &Tensor,
) -> Tensor {
    match (kind, l_real) {
        (AdversarialLoss::Relativistic, Some(l_real)) => {
            relativistic_generator_loss(l_real, l_fake)
        }
        (AdversarialLoss::Hinge, _) => hinge_generator_loss(l_fake),
        _ => non_saturating_generator_loss(l_fake),
    }
}

pub(super) fn mean(t: &Tensor) -> Tensor {
    t.detach().mean(Kind::Float)
}

impl<'a, G: VelocityModel> AdversarialStep<'a, G> {
    /// The step for `generator` (part [`GENERATOR`]) against `discriminator` (part
    /// [`DISCRIMINATOR`]), `batch` clips per micro-batch.
    pub fn new(
        generator: &'a G,
        discriminator: &'a AptDiscriminator,
        config: AdversarialConfig,
        data: &'a mut dyn ClipSource,
        text: &'a dyn CaptionEncoder,
        batch: usize,
        device: Device,
    ) -> Self {
        Self {
            generator,
            discriminator,
            config,
            data,
            text,
            batch,
            shard: Shard::WHOLE,
            recompute: false,
            device,
            batches: Vec::new(),
            next_g: 0,
        }
    }

    /// Trains on `shard`'s rows of every global micro-batch of `batch` clips.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Recomputes the activations of the network each phase trains (D's backbone in the D
    /// phase, G in the G phase) during the backward pass: less memory, the same gradients up to
    /// rounding (D's forwards of one micro-batch then run as one batch).
    pub fn with_recompute(mut self, recompute: bool) -> Self {
        self.recompute = recompute;
        self
    }

    /// This rank's rows of a standard normal draw for the global batch; `local` is `[b, …]`.
    pub(super) fn normal(&self, local: &[i64], rng: &mut TensorRng) -> Result<Tensor> {
        let mut global = local.to_vec();
        global[0] *= self.shard.world as i64;
        self.shard
            .rows(&rng.normal(&global, self.device), "batch_size")
    }

    pub(super) fn d_logits(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        Ok(self
            .discriminator
            .forward(x, t, &cond.context, &cond.pooled)?)
    }

    /// This rank's rows of D times drawn for the global batch (`b` local samples).
    pub(super) fn d_times(&self, b: i64, rng: &mut TensorRng) -> Result<Tensor> {
        let global = b * self.shard.world as i64;
        let t = self.discriminator.sample_times(global, rng, self.device);
        self.shard.rows(&t, "batch_size")
    }

    /// The D phase's micro-batch up to D's inputs: real clips and their captions, fakes
    /// `z − Ĝ(z, c, 1)` without gradient, D times, and both clips as D sees them — the draws
    /// in the order the plain and the recomputed D phase share.
    pub(super) fn d_batch(&mut self, rng: &mut TensorRng) -> Result<DBatch> {
        let (video, captions) = self.data.next_shard(self.batch, self.shard)?;
        let real = to_training_device(&video, self.device);
        let b = real.size()[0];
        let cond = self.text.encode(&captions, &[])?;
        let z = self.normal(&real.size(), rng)?;
        let fake = tch::no_grad(|| OneStepGenerator::new(self.generator).generate(&z, &cond))?;
        let t_real = self.d_times(b, rng)?;
        let mut t_fake = self.d_times(b, rng)?;
        if self.config.loss == AdversarialLoss::Relativistic {
            // Pairs compare a real and a fake clip at the same time.
            t_fake = t_real.shallow_clone();
        }
        let inputs = self.config.inputs();
        let shard = self.shard;
        let x_real = inputs.draw_shard(&real, &t_real, shard, rng).apply(&real);
        let x_fake = inputs.draw_shard(&fake, &t_fake, shard, rng).apply(&fake);
        Ok(DBatch {
            real,
            cond,
            t_real,
            t_fake,
            x_real,
            x_fake,
        })
    }
}

impl<G> AdversarialStep<'_, G> {
    /// A new update: the G phase of the previous one has consumed its batches.
    pub(super) fn start_d_phase(&mut self) {
        if self.next_g > 0 {
            self.batches.clear();
            self.next_g = 0;
        }
    }
}

impl<G: VelocityModel> TrainStep for AdversarialStep<'_, G> {
    fn phases(&self) -> Vec<usize> {
        let mut phases = vec![DISCRIMINATOR; self.config.d_steps];
        phases.push(GENERATOR);
        phases
    }

    fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        self.phase(phase, rng, log, Pass::Forward)
    }

    fn recomputes(&self) -> bool {
        self.recompute
    }

    fn backward_recomputed(
        &mut self,
        phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        self.phase(phase, rng, log, Pass::Recompute { accum })
    }

    fn cursor(&self) -> Cursor {
        self.data.cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.data.restore(cursor)
    }
}
