//! The one-step generator `G(z, c) = z − Ĝ(z, c, T)` with `T = 1` (spec §4), and its zero-shot
//! few-step use (Euler on a uniform grid; two steps work, more give artifacts per the paper).

use tch::Tensor;

use crate::error::Result;
use crate::flow::{Conditioning, VelocityModel};
use crate::sampler::{sample, Guidance, Method, SamplerConfig};

/// Wraps a velocity model as a generator.
#[derive(Debug)]
pub struct OneStepGenerator<M> {
    model: M,
}

impl<M: VelocityModel> OneStepGenerator<M> {
    /// A generator around `model` (a distilled or adversarially post-trained student).
    pub fn new(model: M) -> Self {
        Self { model }
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// `x = z − Ĝ(z, c, 1)`: one network evaluation. `z` `[B, C, T, H, W]`, `cond` of batch
    /// `B` or 1 (broadcast) → `[B, C, T, H, W]`.
    pub fn generate(&self, z: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let t = Tensor::ones([z.size()[0]], (tch::Kind::Float, z.device()));
        Ok(z - self.model.velocity(z, &t, &cond.expand_to(z.size()[0]))?)
    }

    /// Zero-shot `steps`-step generation: Euler `x ← x + (t' − t)·Ĝ(x, c, t)` from 1 to 0 on a
    /// uniform grid, no guidance; shapes as [`generate`](Self::generate).
    pub fn generate_steps(&self, z: &Tensor, cond: &Conditioning, steps: usize) -> Result<Tensor> {
        let g = Guidance {
            cond,
            uncond: None,
            scale: 1.0,
        };
        sample(
            &self.model,
            z,
            &g,
            &SamplerConfig {
                steps,
                method: Method::Euler,
                shift: 1.0,
                cfg_scale: 1.0,
            },
        )
    }
}

impl<M: VelocityModel> VelocityModel for &M {
    fn velocity(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        (*self).velocity(x, t, cond)
    }
}
