//! Timestep distributions for training and the SD3 shift.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::{config_error, Result};
use crate::rng::TensorRng;

/// SD3's shift `s·t / (1 + (s − 1)·t)`: identity at `s = 1`, fixes 0 and 1, monotone; `s > 1`
/// spends more time near noise.
pub fn shift(t: f64, s: f64) -> f64 {
    s * t / (1.0 + (s - 1.0) * t)
}

/// [`shift`] on a tensor.
pub fn shift_tensor(t: &Tensor, s: f64) -> Tensor {
    if s == 1.0 {
        return t.shallow_clone();
    }
    t * s / (t * (s - 1.0) + 1.0)
}

/// The base distribution of training times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TimeDistribution {
    /// `t ~ U(0, 1)`.
    Uniform,
    /// `t = sigmoid(m + s·n)`, `n ~ N(0, 1)` (SD3's logit-normal).
    LogitNormal {
        /// Location `m`.
        mean: f64,
        /// Scale `s`.
        std: f64,
    },
}

/// Training-time sampler: a base distribution pushed through the shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestepSampler {
    /// Base distribution.
    pub distribution: TimeDistribution,
    /// Shift `s` applied after drawing (1 = none).
    #[serde(default = "no_shift")]
    pub shift: f64,
}

fn no_shift() -> f64 {
    1.0
}

impl Default for TimestepSampler {
    fn default() -> Self {
        Self {
            distribution: TimeDistribution::Uniform,
            shift: 1.0,
        }
    }
}

impl TimestepSampler {
    /// Checks the values; `key` prefixes the field names in errors (e.g. `timesteps`).
    pub fn validate(&self, key: &str) -> Result<()> {
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(config_error(
                &format!("{key}.shift"),
                format!("must be positive, got {}", self.shift),
            ));
        }
        if let TimeDistribution::LogitNormal { mean, std } = self.distribution {
            if !(mean.is_finite() && std.is_finite() && std > 0.0) {
                return Err(config_error(
                    &format!("{key}.distribution"),
                    format!("logit-normal needs finite mean and std > 0, got {mean}, {std}"),
                ));
            }
        }
        Ok(())
    }

    /// `n` times `[n]` in [0, 1): `t = shift(t₀, s)` with `t₀` drawn from the base distribution.
    pub fn sample(&self, n: i64, rng: &mut TensorRng, device: Device) -> Tensor {
        let base = match self.distribution {
            TimeDistribution::Uniform => rng.uniform(&[n], device),
            TimeDistribution::LogitNormal { mean, std } => {
                (rng.normal(&[n], device) * std + mean).sigmoid()
            }
        };
        shift_tensor(&base, self.shift)
    }
}
