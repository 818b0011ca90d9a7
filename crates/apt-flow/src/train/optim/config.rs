//! An optimizer's kind and hyper-parameters, as a stage's `optimizer` / `optimizer_d` table
//! (PyTorch's names, meanings and defaults).

use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// Which optimizer, with its hyper-parameters (PyTorch's names and meanings).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    Adamw {
        /// Peak learning rate (schedules scale it).
        lr: f64,
        /// `(β1, β2)`.
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default)]
        weight_decay: f64,
    },
    /// `torch.optim.RMSprop` (the APT paper: α = 0.9, no weight decay).
    Rmsprop {
        /// Peak learning rate.
        lr: f64,
        /// Smoothing constant of the squared-gradient average.
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// Normalise by the estimated variance instead of the second moment.
        #[serde(default)]
        centered: bool,
    },
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_alpha() -> f64 {
    0.99
}

impl OptimizerConfig {
    /// The peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adamw { lr, .. } | OptimizerConfig::Rmsprop { lr, .. } => *lr,
        }
    }

    /// Tensors of optimizer state per parameter tensor (AdamW: 2; RMSProp: 1, +1 with momentum,
    /// +1 centred).
    pub fn state_slots(&self) -> usize {
        match self {
            OptimizerConfig::Adamw { .. } => 2,
            OptimizerConfig::Rmsprop {
                momentum, centered, ..
            } => 1 + usize::from(*momentum != 0.0) + usize::from(*centered),
        }
    }

    /// The optimizer's name, its serialised `kind` (`adamw`, `rmsprop`).
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerConfig::Adamw { .. } => "adamw",
            OptimizerConfig::Rmsprop { .. } => "rmsprop",
        }
    }

    /// Checks every value: finite, and in its range. `key` prefixes the field names in errors
    /// (e.g. `train.optimizer`).
    pub fn validate(&self, key: &str) -> Result<()> {
        let check = |ok: bool, name: &str, value: f64, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(config_error(
                    &format!("{key}.{name}"),
                    format!("{what}, got {value}"),
                ))
            }
        };
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        let fraction = |v: f64| (0.0..1.0).contains(&v);
        match *self {
            OptimizerConfig::Adamw {
                lr,
                betas,
                eps,
                weight_decay,
            } => {
                check(positive(lr), "lr", lr, "must be a positive number")?;
                for b in betas {
                    check(fraction(b), "betas", b, "must be in [0, 1)")?;
                }
                check(positive(eps), "eps", eps, "must be a positive number")?;
                check(
                    non_negative(weight_decay),
                    "weight_decay",
                    weight_decay,
                    "must be a number ≥ 0",
                )
            }
            OptimizerConfig::Rmsprop {
                lr,
                alpha,
                eps,
                weight_decay,
                momentum,
                ..
            } => {
                check(positive(lr), "lr", lr, "must be a positive number")?;
                check(fraction(alpha), "alpha", alpha, "must be in [0, 1)")?;
                check(positive(eps), "eps", eps, "must be a positive number")?;
                check(
                    non_negative(weight_decay),
                    "weight_decay",
                    weight_decay,
                    "must be a number ≥ 0",
                )?;
                check(
                    fraction(momentum),
                    "momentum",
                    momentum,
                    "must be in [0, 1)",
                )
            }
        }
    }
}
