//! Data `x0 ~ N(μ, σ²·I)` has a closed-form rectified-flow velocity field, which makes the
//! samplers and distillation testable against exact answers.
//!
//! With `a = 1 − t`, `b = t` and `V = a²σ² + b²`: `x_t ~ N(aμ, V)`, and
//! `v(x, t) = E[ε − x0 | x_t = x] = (b − aσ²)/V · (x − aμ) − μ`. The ODE from `t = 1` carries
//! `z` to `μ + σ·z` exactly.

use tch::Tensor;

use crate::error::Result;
use crate::flow::{per_sample, Conditioning, VelocityModel};

/// The exact velocity field of Gaussian data (conditioning is ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianFlow {
    /// Data mean.
    pub mu: f64,
    /// Data standard deviation.
    pub sigma: f64,
}

impl GaussianFlow {
    /// Where the exact ODE takes noise `z`: `μ + σ·z`.
    pub fn exact_endpoint(&self, z: &Tensor) -> Tensor {
        z * self.sigma + self.mu
    }
}

impl VelocityModel for GaussianFlow {
    fn velocity(&self, x: &Tensor, t: &Tensor, _cond: &Conditioning) -> Result<Tensor> {
        let t = per_sample(t, x).to_kind(tch::Kind::Double);
        let a = t.neg() + 1.0;
        let var = a.square() * (self.sigma * self.sigma) + t.square();
        let gain = (&t - &a * (self.sigma * self.sigma)) / var;
        let x = x.to_kind(tch::Kind::Double);
        Ok(gain * (x - a * self.mu) - self.mu)
    }
}
