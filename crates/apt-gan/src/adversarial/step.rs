//! One adversarial update as a [`TrainStep`] with two phases: D, then G.

use apt_flow::data::{CaptionEncoder, ClipSource, Cursor};
use apt_flow::train::{StepLog, TrainStep};
use apt_flow::{Conditioning, OneStepGenerator, Result, TensorRng, VelocityModel};
use tch::{Device, Kind, Tensor};

use super::config::AdversarialConfig;
use crate::discriminator::AptDiscriminator;
use crate::losses::{approx_r1_penalty, bce_discriminator_loss, non_saturating_generator_loss};

/// Index of the generator among the loop's parts (its name is `generator`).
pub const GENERATOR: usize = 0;
/// Index of the discriminator among the loop's parts (its name is `discriminator`).
pub const DISCRIMINATOR: usize = 1;

/// The D and G phases of one APT update.
///
/// * D phase, per micro-batch: real clips `x` and captions `c`; `x̂ = z − Ĝ(z, c, 1)` without
///   gradient; `t_r, t_f ~ shift(U(0, 1), s)` per sample; the loss is
///   `softplus(−D(x, t_r, c)) + softplus(D(x̂, t_f, c))` plus `λ·(D(x, t_r, c) − D(x + σε, t_r, c))²`
///   (the same time and text for both aR1 branches). Logs `d_real`, `d_fake` (mean logits),
///   `d_loss`, `ar1` (λ included).
/// * G phase, per micro-batch: the captions of the D phase's micro-batches, fresh `z` and D
///   times; the loss is `softplus(−D(z − Ĝ(z, c, 1), t, c))`. Logs `g_loss`.
pub struct AdversarialStep<'a, G> {
    generator: &'a G,
    discriminator: &'a AptDiscriminator,
    config: AdversarialConfig,
    data: &'a mut dyn ClipSource,
    text: &'a dyn CaptionEncoder,
    batch: usize,
    device: Device,
    /// Conditioning of the last D phase's micro-batches, reused by the G phase.
    conds: Vec<Conditioning>,
    /// Which G micro-batch comes next.
    next_g: usize,
}

fn mean(t: &Tensor) -> f64 {
    t.detach().mean(Kind::Float).double_value(&[])
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
            device,
            conds: Vec::new(),
            next_g: 0,
        }
    }

    fn d_logits(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        Ok(self
            .discriminator
            .forward(x, t, &cond.context, &cond.pooled)?)
    }

    fn d_times(&self, b: i64, rng: &mut TensorRng) -> Tensor {
        self.discriminator
            .times_from_uniform(&rng.uniform(&[b], self.device))
    }

    fn d_loss(&mut self, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        let (video, captions) = self.data.next_clips(self.batch)?;
        let real = video.to_device(self.device);
        let b = real.size()[0];
        let cond = self.text.encode(&captions, &[])?;
        let z = rng.normal(&real.size(), self.device);
        let fake = tch::no_grad(|| OneStepGenerator::new(self.generator).generate(&z, &cond))?;
        let (t_real, t_fake) = (self.d_times(b, rng), self.d_times(b, rng));
        let l_real = self.d_logits(&real, &t_real, &cond)?;
        let l_fake = self.d_logits(&fake, &t_fake, &cond)?;
        let loss = bce_discriminator_loss(&l_real, &l_fake);
        let noise = rng.normal(&real.size(), self.device);
        let penalty = if self.config.lambda_r1 > 0.0 {
            let d = self.discriminator;
            approx_r1_penalty(
                |x| {
                    d.forward(x, &t_real, &cond.context, &cond.pooled)
                        .expect("shapes checked by the first forward")
                },
                &real,
                self.config.lambda_r1,
                self.config.sigma,
                &noise,
            )
        } else {
            Tensor::zeros([], (Kind::Float, self.device))
        };
        log.add("d_real", mean(&l_real));
        log.add("d_fake", mean(&l_fake));
        log.add("d_loss", loss.double_value(&[]));
        log.add("ar1", penalty.double_value(&[]));
        self.conds.push(cond);
        Ok(loss + penalty)
    }

    fn g_loss(&mut self, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        let cond = self.conds[self.next_g % self.conds.len()].shallow_clone();
        self.next_g += 1;
        let b = cond.batch();
        let [c, t, h, w] = self.data.clip_shape();
        let z = rng.normal(&[b, c, t, h, w], self.device);
        let fake = OneStepGenerator::new(self.generator).generate(&z, &cond)?;
        let times = self.d_times(b, rng);
        let loss = non_saturating_generator_loss(&self.d_logits(&fake, &times, &cond)?);
        log.add("g_loss", loss.double_value(&[]));
        Ok(loss)
    }
}

impl<G: VelocityModel> TrainStep for AdversarialStep<'_, G> {
    fn phases(&self) -> Vec<usize> {
        vec![DISCRIMINATOR, GENERATOR]
    }

    fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        if phase == 0 {
            if self.next_g > 0 {
                // A new update: the G phase of the previous one has consumed its captions.
                self.conds.clear();
                self.next_g = 0;
            }
            self.d_loss(rng, log)
        } else {
            self.g_loss(rng, log)
        }
    }

    fn cursor(&self) -> Cursor {
        self.data.cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.data.restore(cursor)
    }
}
