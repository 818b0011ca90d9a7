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

/// Freezes the variables of `vs` whose name satisfies `frozen`: they stop requiring gradients
/// and leave the store's trainable list, so that neither [`nn::VarStore::unfreeze`] (which the
/// loop calls around each part's phase) nor the optimizer, clipping or the gradient all-reduce
/// touch them; checkpoints and the EMA still hold them. Returns the names frozen, sorted.
pub fn freeze_variables(vs: &nn::VarStore, frozen: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut pointers = std::collections::HashSet::new();
    for (name, var) in vs.variables() {
        if frozen(&name) {
            let _ = var.set_requires_grad(false);
            pointers.insert(var.data_ptr() as usize);
            names.push(name);
        }
    }
    vs.variables_
        .lock()
        .expect("the variable store's lock")
        .trainable_variables
        .retain(|v| !pointers.contains(&(v.tensor.data_ptr() as usize)));
    names.sort();
    names
}
