//! The adversarial objective's settings (the loop's knobs are `apt_flow::TrainConfig`).
//! Every option defaults to the paper's recipe; each departure names its source.

use apt_flow::error::config_error;
use serde::{Deserialize, Serialize};

use super::inputs::DiscriminatorInputs;

/// The D/G loss pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdversarialLoss {
    /// APT's: D `softplus(−l_real) + softplus(l_fake)`, G `softplus(−l_fake)`.
    #[default]
    NonSaturating,
    /// The relativistic pairing loss (R3GAN, Huang et al. 2024; APT2): D
    /// `softplus(l_fake − l_real)`, G `softplus(l_real − l_fake)` over (real, fake) pairs of the
    /// same caption. G's phase runs D on the D phase's real clips once more.
    Relativistic,
    /// Hinge: D `relu(1 − l_real) + relu(1 + l_fake)`, G `−l_fake`.
    Hinge,
}

/// The adversarial objective: the loss, the approximated R1/R2 penalties, D's updates per G
/// update and what D sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdversarialConfig {
    /// Weight λ of the approximated R1 on real clips (paper: 100; 0 turns it off).
    pub lambda_r1: f64,
    /// Its perturbation standard deviation σ (paper: 0.01 images, 0.1 video).
    pub sigma: f64,
    /// Weight of the approximated R2 on generated clips (APT2; 0 = off, the default).
    pub lambda_r2: f64,
    /// Its perturbation standard deviation.
    pub sigma_r2: f64,
    /// The loss pair.
    pub loss: AdversarialLoss,
    /// D updates per G update (1 in the paper).
    pub d_steps: usize,
    /// Translation and noising of D's inputs (both off in the paper).
    pub inputs: DiscriminatorInputs,
}

impl Default for AdversarialConfig {
    /// The paper's video stage: non-saturating loss, λ = 100, σ = 0.1, no R2, one D step,
    /// clean untranslated inputs.
    fn default() -> Self {
        Self {
            lambda_r1: 100.0,
            sigma: 0.1,
            lambda_r2: 0.0,
            sigma_r2: 0.1,
            loss: AdversarialLoss::NonSaturating,
            d_steps: 1,
            inputs: DiscriminatorInputs::default(),
        }
    }
}

impl AdversarialConfig {
    /// Checks the values (finite, ≥ 0; at least one D step); `key` prefixes the field names in
    /// errors.
    pub fn validate(&self, key: &str) -> apt_flow::Result<()> {
        for (name, value) in [
            ("lambda_r1", self.lambda_r1),
            ("sigma", self.sigma),
            ("lambda_r2", self.lambda_r2),
            ("sigma_r2", self.sigma_r2),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(config_error(
                    &format!("{key}.{name}"),
                    format!("must be a number ≥ 0, got {value}"),
                ));
            }
        }
        if self.d_steps == 0 {
            return Err(config_error(
                &format!("{key}.d_steps"),
                "must be at least 1",
            ));
        }
        if self.inputs.translate < 0 {
            return Err(config_error(
                &format!("{key}.translate"),
                format!("must be ≥ 0 pixels, got {}", self.inputs.translate),
            ));
        }
        Ok(())
    }
}
