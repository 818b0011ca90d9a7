//! The adversarial objective's settings (the loop's knobs are `apt_flow::TrainConfig`). This
//! struct owns every default: each field defaults to the paper's video stage (Lin et al. 2025,
//! §3.2 and §4.1), and each departure names its source. In a run config its fields sit
//! directly under `[apt]`.

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

/// The approximated R1's σ of the paper's video stage.
pub const VIDEO_SIGMA_R1: f64 = 0.1;
/// The approximated R1's σ of the paper's image stage.
pub const IMAGE_SIGMA_R1: f64 = 0.01;

/// The adversarial objective: the loss, the approximated R1/R2 penalties, D's updates per G
/// update and what D sees. `Default` is the paper's video stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdversarialConfig {
    /// Weight λ of the approximated R1 on real clips (paper: 100; 0 turns it off).
    pub lambda_r1: f64,
    /// The approximated R1's perturbation standard deviation σ (paper: 0.1 for video, the
    /// default, [`VIDEO_SIGMA_R1`]; 0.01 for images, [`IMAGE_SIGMA_R1`]).
    pub sigma_r1: f64,
    /// The loss pair (paper: non-saturating).
    pub loss: AdversarialLoss,
    /// Weight of the approximated R2 on generated clips (APT2; 0 = off, the default).
    pub lambda_r2: f64,
    /// Its perturbation standard deviation (default: `sigma_r1`); see
    /// [`sigma_r2`](Self::sigma_r2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_r2: Option<f64>,
    /// D updates per G update (1 in the paper).
    pub d_steps: usize,
    /// Random translation of every clip D sees by 0..=`translate` pixels along H and W
    /// (DiffAugment, Zhao et al. 2020; `patch − 1` covers every phase of the patch grid; 0 =
    /// off, the paper). See [`DiscriminatorInputs`].
    pub translate: i64,
    /// D sees `x_t = (1 − t)·x + t·ε` at its timestep instead of the clean clip (LADD, Sauer et
    /// al. 2024; a departure from APT; off by default).
    pub noised_inputs: bool,
}

impl Default for AdversarialConfig {
    /// The paper's video stage: non-saturating loss, λ = 100, σ = 0.1, no R2, one D step,
    /// clean untranslated inputs.
    fn default() -> Self {
        Self {
            lambda_r1: 100.0,
            sigma_r1: VIDEO_SIGMA_R1,
            loss: AdversarialLoss::NonSaturating,
            lambda_r2: 0.0,
            sigma_r2: None,
            d_steps: 1,
            translate: 0,
            noised_inputs: false,
        }
    }
}

impl AdversarialConfig {
    /// What D's inputs go through (translation, noising).
    pub fn inputs(&self) -> DiscriminatorInputs {
        DiscriminatorInputs {
            translate: self.translate,
            noised: self.noised_inputs,
        }
    }

    /// The approximated R2's σ: `sigma_r2`, or `sigma_r1` when it is not set.
    pub fn sigma_r2(&self) -> f64 {
        self.sigma_r2.unwrap_or(self.sigma_r1)
    }

    /// Checks the values (finite, ≥ 0; at least one D step); `key` prefixes the field names in
    /// errors.
    pub fn validate(&self, key: &str) -> apt_flow::Result<()> {
        for (name, value) in [
            ("lambda_r1", self.lambda_r1),
            ("sigma_r1", self.sigma_r1),
            ("lambda_r2", self.lambda_r2),
            ("sigma_r2", self.sigma_r2()),
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
        if self.translate < 0 {
            return Err(config_error(
                &format!("{key}.translate"),
                format!("must be ≥ 0 pixels, got {}", self.translate),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_is_the_papers_video_stage() {
        let cfg: AdversarialConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, AdversarialConfig::default());
        assert_eq!(cfg.sigma_r1, 0.1);
        assert_eq!(cfg.sigma_r2(), 0.1);
    }

    #[test]
    fn keys_are_flat_and_unknown_keys_are_refused() {
        let cfg: AdversarialConfig = toml::from_str(
            "sigma_r1 = 0.01\nlambda_r2 = 5\nloss = \"hinge\"\ntranslate = 3\nnoised_inputs = true",
        )
        .unwrap();
        assert_eq!(cfg.sigma_r2(), 0.01);
        assert_eq!(cfg.lambda_r2, 5.0);
        assert_eq!(cfg.loss, AdversarialLoss::Hinge);
        assert_eq!(
            cfg.inputs(),
            DiscriminatorInputs {
                translate: 3,
                noised: true
            }
        );
        let e = toml::from_str::<AdversarialConfig>("sigma_r3 = 1").unwrap_err();
        assert!(e.to_string().contains("sigma_r3"), "{e}");
        // Round trip.
        let back: AdversarialConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
