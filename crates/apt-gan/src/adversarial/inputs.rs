//! What the discriminator sees. APT feeds D the clip as it is; two departures are available:
//!
//! * **Random translation** (DiffAugment, Zhao et al. 2020, "translation"): every clip D sees —
//!   real, fake, and both branches of the approximated R1/R2 — is shifted right and down by
//!   `(dy, dx)` pixels with `dy, dx ~ U{0, …, max}` per sample, the uncovered border replicating
//!   the edge. With `max = patch − 1` the patch grid lands at a random phase, so a
//!   patch-periodic pattern is no longer one constant vector added to every token of D's linear
//!   patch embedding. G's gradient flows through the shift.
//! * **Noised inputs** (LADD, Sauer et al. 2024): D sees `x_t = (1 − t)·x + t·ε` at its own
//!   timestep `t` instead of the clean `x`, as the diffusion backbone did in pre-training.
//!
//! A [`InputDraw`] fixes one batch's randomness, so the same draw can be applied to a clip and
//! to its perturbed copy.

use apt_flow::flow::interpolate;
use apt_flow::train::Shard;
use apt_flow::TensorRng;
use rand::Rng;
use tch::Tensor;

/// How inputs are prepared for D (both off by default: the paper's behaviour); set by
/// [`AdversarialConfig`](super::AdversarialConfig)'s `translate` and `noised_inputs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscriminatorInputs {
    /// Largest shift in pixels along H and W (0 = off; `patch − 1` = every phase of the grid).
    pub translate: i64,
    /// D sees `x_t` at its timestep rather than the clean clip (LADD; a departure from APT).
    pub noised: bool,
}

/// One batch's draw: per-sample shifts and noise.
#[derive(Debug)]
pub struct InputDraw {
    max: i64,
    shifts: Vec<(i64, i64)>,
    noise: Option<(Tensor, Tensor)>,
}

impl DiscriminatorInputs {
    /// Whether D sees its inputs unchanged.
    pub fn is_identity(&self) -> bool {
        self.translate == 0 && !self.noised
    }

    /// Draws the randomness for a batch shaped like `like` (`[B, C, T, H, W]`) at D-times `t`
    /// `[B]`. Draws nothing (the stream is untouched) when the inputs are unchanged.
    pub fn draw(&self, like: &Tensor, t: &Tensor, rng: &mut TensorRng) -> InputDraw {
        self.draw_shard(like, t, Shard::WHOLE, rng)
    }

    /// [`draw`](Self::draw) for `shard`'s rows of a global batch: `like` `[B, …]` and `t` `[B]`
    /// are this rank's rows, the stream advances as for the whole global batch of `B·N` clips,
    /// and the draw holds this rank's rows of it (what one process would draw for them).
    pub fn draw_shard(
        &self,
        like: &Tensor,
        t: &Tensor,
        shard: Shard,
        rng: &mut TensorRng,
    ) -> InputDraw {
        let mut shape = like.size();
        let b = shape[0] as usize;
        let start = shard.rank * b;
        shape[0] *= shard.world as i64;
        let shifts = if self.translate > 0 {
            let r = rng.inner();
            let all: Vec<(i64, i64)> = (0..shape[0])
                .map(|_| {
                    (
                        r.gen_range(0..=self.translate),
                        r.gen_range(0..=self.translate),
                    )
                })
                .collect();
            all[start..start + b].to_vec()
        } else {
            Vec::new()
        };
        let noise = self.noised.then(|| {
            let eps = rng.normal(&shape, like.device());
            (eps.narrow(0, start as i64, b as i64), t.shallow_clone())
        });
        InputDraw {
            max: self.translate,
            shifts,
            noise,
        }
    }
}

impl InputDraw {
    /// The clips as D sees them, `[B, C, T, H, W]` → same shape: shifted, then noised,
    /// `(1 − t)·shift(x) + t·ε` (differentiable in `x`).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let shifted = if self.shifts.is_empty() {
            x.shallow_clone()
        } else {
            translate(x, &self.shifts, self.max)
        };
        match &self.noise {
            Some((eps, t)) => interpolate(&shifted, eps, t),
            None => shifted,
        }
    }
}

/// Shifts clip `i` of `x` (`[B, C, T, H, W]`) right by `shifts[i].1` and down by `shifts[i].0`
/// pixels (each in `0..=max`), replicating the top/left edge into the uncovered border.
pub fn translate(x: &Tensor, shifts: &[(i64, i64)], max: i64) -> Tensor {
    let size = x.size();
    let (h, w) = (size[3], size[4]);
    assert_eq!(shifts.len() as i64, size[0], "one shift per clip");
    let padded = x.replication_pad3d([max, 0, max, 0, 0, 0]);
    let clips: Vec<Tensor> = shifts
        .iter()
        .enumerate()
        .map(|(i, &(dy, dx))| {
            assert!((0..=max).contains(&dy) && (0..=max).contains(&dx));
            padded
                .get(i as i64)
                .narrow(2, max - dy, h)
                .narrow(3, max - dx, w)
        })
        .collect();
    Tensor::stack(&clips, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn translate_moves_pixels_and_replicates_the_edge() {
        let x = Tensor::arange(2 * 16, (Kind::Float, Device::Cpu)).view([2, 1, 1, 4, 4]);
        let y = translate(&x, &[(0, 0), (1, 2)], 3);
        assert!(y.get(0).equal(&x.get(0)));
        let (a, b) = (x.get(1).squeeze(), y.get(1).squeeze());
        // Content moved down 1, right 2.
        assert!(b
            .narrow(0, 1, 3)
            .narrow(1, 2, 2)
            .equal(&a.narrow(0, 0, 3).narrow(1, 0, 2)));
        // The uncovered top row and left columns repeat the edge.
        assert_eq!(b.double_value(&[0, 0]), a.double_value(&[0, 0]));
        assert_eq!(b.double_value(&[2, 1]), a.double_value(&[1, 0]));
    }

    #[test]
    fn identity_draws_nothing() {
        let inputs = DiscriminatorInputs::default();
        let x = Tensor::ones([2, 3, 2, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let (mut a, mut b) = (TensorRng::new(1, 0), TensorRng::new(1, 0));
        let y = inputs.draw(&x, &t, &mut a).apply(&x);
        assert!(y.equal(&x));
        assert!(a
            .normal(&[4], Device::Cpu)
            .equal(&b.normal(&[4], Device::Cpu)));
    }

    #[test]
    fn noised_inputs_interpolate_at_d_time() {
        let inputs = DiscriminatorInputs {
            translate: 0,
            noised: true,
        };
        let x = Tensor::ones([2, 1, 1, 2, 2], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.0f32, 1.0]);
        let draw = inputs.draw(&x, &t, &mut TensorRng::new(3, 0));
        let y = draw.apply(&x);
        assert!(y.get(0).equal(&x.get(0)));
        assert!(!y.get(1).allclose(&x.get(1), 1e-3, 1e-3, false));
    }

    #[test]
    fn gradient_flows_through_the_shift() {
        let x = Tensor::ones([1, 1, 1, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = translate(&x, &[(2, 1)], 3);
        y.sum(Kind::Float).backward();
        // Every output pixel comes from one input pixel: the gradients sum to H·W.
        assert_eq!(x.grad().sum(Kind::Float).double_value(&[]), 16.0);
    }
}
