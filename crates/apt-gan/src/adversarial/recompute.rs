//! The adversarial step's D and G phases with activation recomputation: the same random draws,
//! in the same order, and the same losses as [`AdversarialStep`]'s `loss`, but each phase drives
//! its own backward pass through the network it trains — D's backbone
//! ([`AptDiscriminator::backward_with_recompute`], every D input of the micro-batch in one
//! batch) or G ([`VelocityModel::backward_velocity_loss`], D frozen inside the loss).

use apt_flow::train::StepLog;
use apt_flow::{Result, TensorRng, VelocityModel};
use tch::{Kind, Tensor};

use super::config::AdversarialLoss;
use super::step::{discriminator_loss, generator_loss, mean, AdversarialStep, DBatch};
use crate::losses::approx_penalty_from_logits;

impl<G: VelocityModel> AdversarialStep<'_, G> {
    /// The D phase of one micro-batch with D's backbone recomputed; returns the loss value.
    pub(super) fn d_backward_recomputed(
        &mut self,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let DBatch {
            real,
            cond,
            t_real,
            t_fake,
            x_real,
            x_fake,
        } = self.d_batch(rng)?;
        let b = real.size()[0];
        let c = self.config;
        // The penalties' perturbations, drawn as `penalty` draws them (aR1's always).
        let eps_r1 = self.normal(&x_real.size(), rng)?;
        let eps_r2 = (c.lambda_r2 > 0.0)
            .then(|| self.normal(&x_fake.size(), rng))
            .transpose()?;
        // Every D input of the micro-batch in one batch: real, fake, then the perturbed copies.
        let mut xs = vec![x_real.shallow_clone(), x_fake.shallow_clone()];
        let mut ts = vec![t_real.shallow_clone(), t_fake.shallow_clone()];
        if c.lambda_r1 > 0.0 {
            xs.push(&x_real + &eps_r1 * c.sigma_r1);
            ts.push(t_real.shallow_clone());
        }
        if let Some(eps) = &eps_r2 {
            xs.push(&x_fake + eps * c.sigma_r2());
            ts.push(t_fake.shallow_clone());
        }
        let k = xs.len() as i64;
        let context = Tensor::cat(&(0..k).map(|_| &cond.context).collect::<Vec<_>>(), 0);
        let pooled = Tensor::cat(&(0..k).map(|_| &cond.pooled).collect::<Vec<_>>(), 0);
        let mut logged: Option<[Tensor; 5]> = None;
        let _scaled = self.discriminator.backward_with_recompute(
            &Tensor::cat(&xs, 0),
            &Tensor::cat(&ts, 0),
            &context,
            &pooled,
            |logits| {
                let part = |i: i64| logits.narrow(0, i * b, b);
                let (l_real, l_fake) = (part(0), part(1));
                let loss = discriminator_loss(c.loss, &l_real, &l_fake);
                let mut next = 2;
                let mut penalty = |clean: &Tensor, lambda: f64| {
                    let p = approx_penalty_from_logits(clean, &part(next), lambda);
                    next += 1;
                    p
                };
                let zero = || Tensor::zeros([], (Kind::Float, logits.device()));
                let ar1 = if c.lambda_r1 > 0.0 {
                    penalty(&l_real, c.lambda_r1)
                } else {
                    zero()
                };
                let ar2 = if c.lambda_r2 > 0.0 {
                    penalty(&l_fake, c.lambda_r2)
                } else {
                    zero()
                };
                logged = Some([
                    mean(&l_real),
                    mean(&l_fake),
                    loss.detach(),
                    ar1.detach(),
                    ar2.detach(),
                ]);
                (loss + ar1 + ar2) / accum as f64
            },
        )?;
        let [d_real, d_fake, d_loss, ar1, ar2] = logged.expect("the loss was computed");
        log.add_tensor("d_real", &d_real);
        log.add_tensor("d_fake", &d_fake);
        log.add_tensor("d_loss", &d_loss);
        log.add_tensor("ar1", &ar1);
        if c.lambda_r2 > 0.0 {
            log.add_tensor("ar2", &ar2);
        }
        let keep_real = (c.loss == AdversarialLoss::Relativistic).then_some(real);
        self.batches.push((cond, keep_real));
        Ok(d_loss + ar1 + ar2)
    }

    /// The G phase of one micro-batch with G recomputed (D frozen, run with autograd inside
    /// the loss so that the gradient reaches G's output); returns the loss value.
    pub(super) fn g_backward_recomputed(
        &mut self,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let (cond, real) = &self.batches[self.next_g % self.batches.len()];
        let (cond, real) = (
            cond.shallow_clone(),
            real.as_ref().map(|r| r.shallow_clone()),
        );
        self.next_g += 1;
        let b = cond.batch();
        let [c, t, h, w] = self.data.clip_shape();
        let z = self.normal(&[b, c, t, h, w], rng)?;
        let times = self.d_times(b, rng)?;
        let (inputs, shard) = (self.config.inputs(), self.shard);
        // G's output has z's shape: the draws need only that.
        let draw_fake = inputs.draw_shard(&z, &times, shard, rng);
        let l_real = match (self.config.loss, real) {
            (AdversarialLoss::Relativistic, Some(real)) => {
                let x_real = inputs.draw_shard(&real, &times, shard, rng).apply(&real);
                Some(tch::no_grad(|| self.d_logits(&x_real, &times, &cond))?)
            }
            _ => None,
        };
        let ones = Tensor::ones([b], (Kind::Float, self.device));
        let (loss_kind, discriminator) = (self.config.loss, self.discriminator);
        let mut value = None;
        let mut failure = None;
        let _scaled = self
            .generator
            .backward_velocity_loss(&z, &ones, &cond, true, &mut |v| {
                let fake = &z - v;
                let x_fake = draw_fake.apply(&fake);
                let l_fake =
                    match discriminator.forward(&x_fake, &times, &cond.context, &cond.pooled) {
                        Ok(l) => l,
                        Err(e) => {
                            failure = Some(e);
                            return Tensor::zeros([], (Kind::Float, z.device()));
                        }
                    };
                let loss = generator_loss(loss_kind, l_real.as_ref(), &l_fake);
                value = Some(loss.detach());
                loss / accum as f64
            })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let value = value.expect("the loss was computed");
        log.add_tensor("g_loss", &value);
        Ok(value)
    }
}
