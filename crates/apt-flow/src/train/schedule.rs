//! Learning-rate schedules: linear warm-up, then constant or cosine decay.

use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// After warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Decay {
    /// Stay at the peak.
    Constant,
    /// Half-cosine from the peak to `min_factor × peak` at `total_steps`.
    Cosine {
        /// Final fraction of the peak, in [0, 1].
        #[serde(default)]
        min_factor: f64,
    },
}

/// Warm-up + decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Steps of linear warm-up from 0 to the peak.
    #[serde(default)]
    pub warmup_steps: u64,
    /// What follows.
    pub decay: Decay,
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            decay: Decay::Constant,
        }
    }
}

impl LrSchedule {
    /// Checks the values; `key` prefixes the field names in errors (e.g. `train.schedule`).
    pub fn validate(&self, key: &str) -> Result<()> {
        if let Decay::Cosine { min_factor } = self.decay {
            if !(0.0..=1.0).contains(&min_factor) {
                return Err(config_error(
                    &format!("{key}.decay.min_factor"),
                    format!(
                        "must be in [0, 1] (a fraction of the peak learning rate), got {min_factor}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Learning rate for update `step` (1-based) of `total_steps`, given the peak: with `W`
    /// warm-up steps, `peak·step/W` for `step ≤ W`; then `peak` (constant) or
    /// `peak·(m + (1 − m)·½(1 + cos(π·p)))` (cosine), `p = (step − W)/(total_steps − W)`
    /// clamped to [0, 1], `m = min_factor`.
    pub fn lr(&self, peak: f64, step: u64, total_steps: u64) -> f64 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return peak * step as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => peak,
            Decay::Cosine { min_factor } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps.min(step)) as f64 / span).clamp(0.0, 1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                peak * (min_factor + (1.0 - min_factor) * cosine)
            }
        }
    }
}
