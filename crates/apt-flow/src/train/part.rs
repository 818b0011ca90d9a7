//! A trained network as the loop holds it: weights, optimizer and optional EMA.

use tch::nn;

use super::{Ema, Optimizer, OptimizerConfig};
use crate::error::{FlowError, Result};

/// One trained network: its weights, optimizer and optional EMA.
#[derive(Debug)]
pub struct Part {
    /// Checkpoint prefix and metric suffix (`model`, `generator`, `discriminator`).
    pub name: String,
    /// The weights (models built on it share its tensors).
    pub vs: nn::VarStore,
    /// Its optimizer.
    pub optimizer: Optimizer,
    /// EMA of its weights.
    pub ema: Option<Ema>,
}

impl Part {
    /// A part named `name` training `vs` with `optimizer`, with an EMA when `ema_decay` is set.
    pub fn new(
        name: &str,
        vs: nn::VarStore,
        optimizer: OptimizerConfig,
        ema_decay: Option<f64>,
    ) -> Result<Self> {
        if name.is_empty() || name == "ema" || name == "optimizer" || name.contains('.') {
            return Err(FlowError::Config {
                key: "part".into(),
                reason: format!("{name:?} cannot name a trained part"),
            });
        }
        Ok(Self {
            name: name.into(),
            ema: ema_decay.map(|d| Ema::new(&vs, d)),
            optimizer: Optimizer::new(optimizer)?,
            vs,
        })
    }

    /// Copies the weights to export — the EMA's when there is one, else the raw weights —
    /// into `target` (a store of the same model).
    pub fn copy_exported_to(&self, target: &nn::VarStore) -> Result<()> {
        match &self.ema {
            Some(ema) => ema.copy_to(target),
            None => {
                copy_weights(&self.vs, target);
                Ok(())
            }
        }
    }
}

/// Copies every variable of `from` into the same-named variable of `to`.
pub fn copy_weights(from: &nn::VarStore, to: &nn::VarStore) {
    tch::no_grad(|| {
        let src = from.variables();
        for (k, mut v) in to.variables() {
            v.copy_(&src[&k]);
        }
    });
}
