//! Rectified flow: `x_t = (1 − t)·x0 + t·ε`, the network predicts `v = ε − x0`, loss = MSE.
//! `t = 1` is pure noise; sampling integrates `dx/dt = v` from 1 to 0. A model may predict the
//! clean sample instead ([`apt_mmdit::Prediction::Sample`]); its output is turned into the
//! velocity here, so every loss and sampler sees velocities.

use apt_mmdit::{Prediction, TapOutput};
use tch::{Kind, Tensor};

use crate::error::Result;

/// Text conditioning for a batch: token states `[B, L, D]` and pooled vectors `[B, P]`.
#[derive(Debug)]
pub struct Conditioning {
    /// Token states.
    pub context: Tensor,
    /// Pooled vectors.
    pub pooled: Tensor,
}

impl Conditioning {
    /// A shallow copy.
    pub fn shallow_clone(&self) -> Self {
        Self {
            context: self.context.shallow_clone(),
            pooled: self.pooled.shallow_clone(),
        }
    }

    /// Batch size.
    pub fn batch(&self) -> i64 {
        self.pooled.size()[0]
    }

    /// The same conditioning repeated for every sample of a batch of `b`.
    pub fn expand_to(&self, b: i64) -> Self {
        if self.batch() == b {
            return self.shallow_clone();
        }
        assert_eq!(
            self.batch(),
            1,
            "only a single conditioning can be broadcast"
        );
        let (l, d, p) = (
            self.context.size()[1],
            self.context.size()[2],
            self.pooled.size()[1],
        );
        Self {
            context: self.context.expand([b, l, d], false).contiguous(),
            pooled: self.pooled.expand([b, p], false).contiguous(),
        }
    }

    /// Two conditionings stacked along the batch (their token counts must match).
    pub fn cat(a: &Self, b: &Self) -> Option<Self> {
        (a.context.size()[1..] == b.context.size()[1..]).then(|| Self {
            context: Tensor::cat(&[&a.context, &b.context], 0),
            pooled: Tensor::cat(&[&a.pooled, &b.pooled], 0),
        })
    }
}

/// Anything that predicts the velocity `v(x_t, t, c)`: the MMDiT, a distilled student, or
/// the closed-form Gaussian field used in tests.
pub trait VelocityModel {
    /// `x` `[B, C, T, H, W]` (or any `[B, …]`), `t` `[B]` in [0, 1] → `v` shaped like `x`.
    fn velocity(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor>;

    /// Back-propagates `loss(v)` for `v = velocity(x, t, cond)` into the model's parameters and
    /// returns the (detached) scalar loss. With `recompute`, a model that can (the MMDiT) keeps
    /// only each block's input and recomputes the rest during the backward pass — less memory,
    /// one more forward, the same gradients; by default a plain forward and backward. No
    /// gradient reaches `x`, `t` or `cond`.
    fn backward_velocity_loss(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        recompute: bool,
        loss: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        let _ = recompute;
        plain_backward(self, x, t, cond, loss)
    }
}

/// `loss(velocity(x, t, cond)).backward()` without recomputation; returns the detached loss
/// (the default of [`VelocityModel::backward_velocity_loss`]).
fn plain_backward<M: VelocityModel + ?Sized>(
    model: &M,
    x: &Tensor,
    t: &Tensor,
    cond: &Conditioning,
    loss: &mut dyn FnMut(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let value = loss(&model.velocity(x, t, cond)?);
    value.backward();
    Ok(value.detach())
}

/// The smallest `t` a clean-sample prediction is divided by when turned into a velocity
/// (JiT clips `1 − t` at 0.05 in its reversed time convention): below it the velocity would
/// amplify the prediction's error without bound.
pub const SAMPLE_PREDICTION_MIN_T: f64 = 0.05;

/// The velocity a clean-sample prediction `x̂0` at `(x_t, t)` implies:
/// `v = (x_t − x̂0) / max(t, SAMPLE_PREDICTION_MIN_T)`; `x_t`, `x0` `[B, …]`, `t` `[B]` (or one
/// value) → like `x_t`.
pub fn velocity_from_sample(x_t: &Tensor, t: &Tensor, x0: &Tensor) -> Tensor {
    (x_t - x0) / per_sample(&t.clamp_min(SAMPLE_PREDICTION_MIN_T), x_t)
}

/// A network's raw output `out` at `(x_t, t)` as a velocity, in `x_t`'s precision (a bf16
/// model's losses are taken in fp32): itself, or the velocity its clean-sample prediction
/// implies (one time for the whole batch broadcasts like one per sample).
fn output_as_velocity(prediction: Prediction, x: &Tensor, t: &Tensor, out: &Tensor) -> Tensor {
    let out = out.to_kind(x.kind());
    match prediction {
        Prediction::Velocity => out,
        Prediction::Sample => velocity_from_sample(x, t, &out),
    }
}

/// `loss` of the velocity a recomputed forward's output implies: the closure
/// `backward_with_recompute` evaluates.
fn loss_of_output<'a>(
    prediction: Prediction,
    x: &Tensor,
    t: &Tensor,
    loss: &'a mut dyn FnMut(&Tensor) -> Tensor,
) -> impl FnOnce(&TapOutput) -> Tensor + 'a {
    let (x, t) = (x.detach(), t.detach());
    move |tapped| {
        let out = tapped.output.as_ref().expect("with_output");
        loss(&output_as_velocity(prediction, &x, &t, out))
    }
}

impl VelocityModel for apt_mmdit::Mmdit {
    fn velocity(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let out = self.forward(x, t, &cond.context, &cond.pooled)?;
        Ok(output_as_velocity(self.config().prediction, x, t, &out))
    }

    fn backward_velocity_loss(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        recompute: bool,
        loss: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        if !recompute {
            return plain_backward(self, x, t, cond, loss);
        }
        let on_output = loss_of_output(self.config().prediction, x, t, loss);
        Ok(self.backward_with_recompute(x, t, &cond.context, &cond.pooled, &[], true, on_output)?)
    }
}

/// Either family (Wan 2.1 predicts the velocity from the text tokens alone: `cond.pooled` is
/// not used).
impl VelocityModel for apt_mmdit::Model {
    fn velocity(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let out = self.forward(x, t, &cond.context, &cond.pooled)?;
        Ok(output_as_velocity(self.config().prediction(), x, t, &out))
    }

    fn backward_velocity_loss(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Conditioning,
        recompute: bool,
        loss: &mut dyn FnMut(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        if !recompute {
            return plain_backward(self, x, t, cond, loss);
        }
        let on_output = loss_of_output(self.config().prediction(), x, t, loss);
        Ok(self.backward_with_recompute(x, t, &cond.context, &cond.pooled, &[], true, on_output)?)
    }
}

/// Back-propagates `loss(v) / accum` for `v = model.velocity(x, t, cond)` with activation
/// recomputation and returns `loss(v)` (detached: what a training step logs).
pub fn backward_recomputed(
    model: &impl VelocityModel,
    x: &Tensor,
    t: &Tensor,
    cond: &Conditioning,
    accum: usize,
    loss: impl Fn(&Tensor) -> Tensor,
) -> Result<Tensor> {
    let mut value = None;
    let _scaled = model.backward_velocity_loss(x, t, cond, true, &mut |v| {
        let l = loss(v);
        value = Some(l.detach());
        l / accum as f64
    })?;
    Ok(value.expect("the loss was computed"))
}

/// Broadcasts `[B]` times over a tensor shaped like `like` `[B, …]`: returns `[B, 1, …, 1]` in
/// `like`'s dtype.
pub fn per_sample(t: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim() - 1));
    t.to_kind(like.kind()).view(shape.as_slice())
}

/// `x_t = (1 − t)·x0 + t·ε`, with `x0`, `ε` `[B, …]` and `t` `[B]` → `[B, …]`.
pub fn interpolate(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Tensor {
    let tb = per_sample(t, x0);
    x0 * (tb.neg() + 1.0) + eps * &tb
}

/// The regression target `v = ε − x0`.
pub fn velocity_target(x0: &Tensor, eps: &Tensor) -> Tensor {
    eps - x0
}

/// Flow-matching loss `mean ‖v(x_t, t, c) − (ε − x0)‖²` (mean over every element; a scalar)
/// for data `x0` and noise `eps` `[B, C, T, H, W]` and times `t` `[B]`.
pub fn flow_matching_loss(
    model: &impl VelocityModel,
    x0: &Tensor,
    eps: &Tensor,
    t: &Tensor,
    cond: &Conditioning,
) -> Result<Tensor> {
    let v = model.velocity(&interpolate(x0, eps, t), t, cond)?;
    Ok((v - velocity_target(x0, eps)).square().mean(Kind::Float))
}

/// The clean-sample estimate one velocity evaluation gives: `x0 = x_t − t·v`, with `x_t`, `v`
/// `[B, …]` and `t` `[B]` → `[B, …]`.
pub fn predict_x0(x_t: &Tensor, t: &Tensor, v: &Tensor) -> Tensor {
    x_t - per_sample(t, x_t) * v
}
