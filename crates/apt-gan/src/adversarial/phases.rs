//! The D and G phases of one adversarial update, each in one function for both passes: the
//! plain forward ([`Pass::Forward`]: the loss keeps its graph and the loop back-propagates
//! it) and activation recomputation (`Pass::Recompute`: the phase drives the backward pass
//! through the network it trains — D's backbone with every D input of the micro-batch in one
//! batch, or G with D frozen inside the loss — and returns the detached loss). The random
//! draws, their order, the losses and what is logged are the same in both.

use apt_flow::train::StepLog;
use apt_flow::{OneStepGenerator, Result, TensorRng, VelocityModel};
use tch::{Kind, Tensor};

use super::config::{AdversarialConfig, AdversarialLoss};
use super::step::{discriminator_loss, generator_loss, mean, AdversarialStep, DBatch, Pass};
use crate::losses::approx_penalty_from_logits;

/// D's objective: the configured loss on the logits of real and fake clips, plus
/// `λ·(D(x) − D(x + σε))²` on real clips (aR1) and, with `lambda_r2 > 0`, on fakes (aR2).
/// `logit(i)` gives D's logits on input `i` of `[real, fake, then the perturbed copies of the
/// penalties that are on]`, asked for in that order, each when first needed. Returns the total
/// and the logged `[d_real, d_fake, d_loss, ar1, ar2]` (detached).
fn d_objective(
    c: &AdversarialConfig,
    mut logit: impl FnMut(usize) -> Result<Tensor>,
) -> Result<(Tensor, [Tensor; 5])> {
    let (l_real, l_fake) = (logit(0)?, logit(1)?);
    let loss = discriminator_loss(c.loss, &l_real, &l_fake);
    let mut next = 2;
    let mut penalty = |on: bool, clean: &Tensor, lambda: f64| -> Result<Tensor> {
        if !on {
            return Ok(Tensor::zeros([], (Kind::Float, clean.device())));
        }
        next += 1;
        Ok(approx_penalty_from_logits(clean, &logit(next - 1)?, lambda))
    };
    let ar1 = penalty(c.lambda_r1 > 0.0, &l_real, c.lambda_r1)?;
    let ar2 = penalty(c.lambda_r2 > 0.0, &l_fake, c.lambda_r2)?;
    let logged = [
        mean(&l_real),
        mean(&l_fake),
        loss.detach(),
        ar1.detach(),
        ar2.detach(),
    ];
    Ok((loss + ar1 + ar2, logged))
}

impl<G: VelocityModel> AdversarialStep<'_, G> {
    /// Phase `phase` of the update (D for the first `d_steps`, then G) on its next micro-batch.
    pub(super) fn phase(
        &mut self,
        phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        pass: Pass,
    ) -> Result<Tensor> {
        if phase < self.config.d_steps {
            self.start_d_phase();
            self.d_phase(rng, log, pass)
        } else {
            self.g_phase(rng, log, pass)
        }
    }

    /// One D micro-batch: real clips and fakes `z − Ĝ(z, c, 1)` (no gradient) through the
    /// batch's input draw, the penalties' perturbations `ε` (aR1's drawn even when it is off:
    /// the stream of the paper's recipe), then D's objective ([`d_objective`]). Logs `d_real`,
    /// `d_fake` (mean logits), `d_loss`, `ar1` and, when on, `ar2` (λ included).
    fn d_phase(&mut self, rng: &mut TensorRng, log: &mut StepLog, pass: Pass) -> Result<Tensor> {
        let DBatch {
            real,
            cond,
            t_real,
            t_fake,
            x_real,
            x_fake,
        } = self.d_batch(rng)?;
        let c = self.config;
        let eps_r1 = self.normal(&x_real.size(), rng)?;
        let eps_r2 = (c.lambda_r2 > 0.0)
            .then(|| self.normal(&x_fake.size(), rng))
            .transpose()?;
        // D's inputs, in the order `d_objective` reads their logits.
        let mut inputs = vec![
            (x_real.shallow_clone(), t_real.shallow_clone()),
            (x_fake.shallow_clone(), t_fake.shallow_clone()),
        ];
        if c.lambda_r1 > 0.0 {
            inputs.push((&x_real + &eps_r1 * c.sigma_r1, t_real.shallow_clone()));
        }
        if let Some(eps) = &eps_r2 {
            inputs.push((&x_fake + eps * c.sigma_r2(), t_fake.shallow_clone()));
        }
        let (value, logged) = match pass {
            Pass::Forward => d_objective(&c, |i| {
                let (x, t) = &inputs[i];
                self.d_logits(x, t, &cond)
            })?,
            Pass::Recompute { accum } => {
                let (b, k) = (real.size()[0], inputs.len());
                let repeat = |t: &Tensor| Tensor::cat(&vec![t; k], 0);
                let xs: Vec<&Tensor> = inputs.iter().map(|(x, _)| x).collect();
                let ts: Vec<&Tensor> = inputs.iter().map(|(_, t)| t).collect();
                let mut logged = None;
                let _scaled = self.discriminator.backward_with_recompute(
                    &Tensor::cat(&xs, 0),
                    &Tensor::cat(&ts, 0),
                    &repeat(&cond.context),
                    &repeat(&cond.pooled),
                    |all| {
                        let (total, values) =
                            d_objective(&c, |i| Ok(all.narrow(0, i as i64 * b, b)))
                                .expect("slices of computed logits");
                        logged = Some(values);
                        total / accum as f64
                    },
                )?;
                let values = logged.expect("the loss was computed");
                (&values[2] + &values[3] + &values[4], values)
            }
        };
        let [d_real, d_fake, d_loss, ar1, ar2] = logged;
        log.add_tensor("d_real", &d_real);
        log.add_tensor("d_fake", &d_fake);
        log.add_tensor("d_loss", &d_loss);
        log.add_tensor("ar1", &ar1);
        if c.lambda_r2 > 0.0 {
            log.add_tensor("ar2", &ar2);
        }
        let keep_real = (c.loss == AdversarialLoss::Relativistic).then_some(real);
        self.batches.push((cond, keep_real));
        Ok(value)
    }

    /// One G micro-batch: the captions (and, for the relativistic loss, the real clips) of a D
    /// micro-batch of this update, fresh `z`, D times and input draw; the loss is G's side of
    /// the pair on `D(z − Ĝ(z, c, 1))` with D frozen. Logs `g_loss`.
    fn g_phase(&mut self, rng: &mut TensorRng, log: &mut StepLog, pass: Pass) -> Result<Tensor> {
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
        // G's output has z's shape: the draw needs only that.
        let draw_fake = inputs.draw_shard(&z, &times, shard, rng);
        let l_real = match (self.config.loss, real) {
            (AdversarialLoss::Relativistic, Some(real)) => {
                let x_real = inputs.draw_shard(&real, &times, shard, rng).apply(&real);
                Some(tch::no_grad(|| self.d_logits(&x_real, &times, &cond))?)
            }
            _ => None,
        };
        let (kind, discriminator) = (self.config.loss, self.discriminator);
        let loss_of = |fake: &Tensor| -> Result<Tensor> {
            let x_fake = draw_fake.apply(fake);
            let l_fake = discriminator.forward(&x_fake, &times, &cond.context, &cond.pooled)?;
            Ok(generator_loss(kind, l_real.as_ref(), &l_fake))
        };
        let value = match pass {
            Pass::Forward => loss_of(&OneStepGenerator::new(self.generator).generate(&z, &cond)?)?,
            Pass::Recompute { accum } => {
                let ones = Tensor::ones([b], (Kind::Float, self.device));
                let (mut value, mut failure) = (None, None);
                let _scaled =
                    self.generator
                        .backward_velocity_loss(&z, &ones, &cond, true, &mut |v| match loss_of(
                            &(&z - v),
                        ) {
                            Ok(loss) => {
                                value = Some(loss.detach());
                                loss / accum as f64
                            }
                            Err(e) => {
                                failure = Some(e);
                                Tensor::zeros([], (Kind::Float, z.device()))
                            }
                        })?;
                if let Some(e) = failure {
                    return Err(e);
                }
                value.expect("the loss was computed")
            }
        };
        log.add_tensor("g_loss", &value);
        Ok(value)
    }
}
