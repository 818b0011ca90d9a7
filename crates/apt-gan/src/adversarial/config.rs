//! The adversarial objective's settings (the loop's knobs are `apt_flow::TrainConfig`).

use apt_flow::error::config_error;

/// λ and σ of the approximated R1 penalty on real clips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdversarialConfig {
    /// Weight λ of the approximated R1 (paper: 100; 0 turns it off).
    pub lambda_r1: f64,
    /// Its perturbation standard deviation σ (paper: 0.01 images, 0.1 video).
    pub sigma: f64,
}

impl Default for AdversarialConfig {
    /// The paper's video stage: λ = 100, σ = 0.1.
    fn default() -> Self {
        Self {
            lambda_r1: 100.0,
            sigma: 0.1,
        }
    }
}

impl AdversarialConfig {
    /// Checks the values (finite, ≥ 0); `key` names the section (`apt`).
    pub fn validate(&self, key: &str) -> apt_flow::Result<()> {
        for (name, value) in [("lambda_r1", self.lambda_r1), ("sigma", self.sigma)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(config_error(
                    &format!("{key}.{name}"),
                    format!("must be a number ≥ 0, got {value}"),
                ));
            }
        }
        Ok(())
    }
}
