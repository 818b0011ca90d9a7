//! A trained network as the loop holds it: weights (in flat buffers, fp32 master weights),
//! optimizer and optional EMA.

use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

use super::flat::FlatParams;
use super::precision::Precision;
use super::shard::{ShardStats, Sharded};
use super::{Ema, Optimizer, OptimizerConfig};
use crate::error::{FlowError, Result};

/// One trained network: its weights, optimizer and optional EMA.
#[derive(Debug)]
pub struct Part {
    /// Checkpoint prefix and metric suffix (`model`, `generator`, `discriminator`).
    pub name: String,
    /// The weights the model computes with (models built on it share its tensors). Its
    /// trainable variables are slices of [`Part::flat`]'s buffers: change them in place
    /// (`copy_`), never by replacing a variable's data or kind.
    pub vs: nn::VarStore,
    /// The trainable variables' flat buffers (the fp32 master weights and gradients).
    pub flat: FlatParams,
    /// Its optimizer.
    pub optimizer: Optimizer,
    /// EMA of its (master) weights.
    pub ema: Option<Ema>,
    /// `shard = gradients | full` while the loop trains: this rank's pieces (then `flat`
    /// binds nothing; see [`Part::shard`]).
    pub(crate) sharded: Option<Sharded>,
    /// What the earlier sharded periods held ([`Part::shard_stats`]).
    pub(crate) shard_stats: ShardStats,
}

impl Part {
    /// A part named `name` training `vs` (fp32) with `optimizer`, with an EMA when `ema_decay`
    /// is set.
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
            flat: FlatParams::new(&vs, Precision::Fp32, None, None),
            vs,
            sharded: None,
            shard_stats: ShardStats::default(),
        })
    }

    /// The same part computing in `precision` (bf16: the model's weights become bf16 copies
    /// of the fp32 master weights).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        if precision != self.flat.precision() {
            self.flat = FlatParams::new(&self.vs, precision, None, Some(&self.flat));
        }
        self
    }

    /// Lays the flat buffers out in `order` (ZeRO-1: by owner), keeping every value.
    pub fn relayout(&mut self, order: &[String]) {
        self.flat = FlatParams::new(
            &self.vs,
            self.flat.precision(),
            Some(order),
            Some(&self.flat),
        );
    }

    /// The precision the part computes in.
    pub fn precision(&self) -> Precision {
        self.flat.precision()
    }

    /// Every variable by name, in fp32: the master weights of the trained ones (what a
    /// checkpoint holds).
    ///
    /// # Panics
    /// While the loop keeps the part sharded (`shard = gradients | full`): the loop gathers
    /// it before a checkpoint, a preview and its return.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        assert!(
            self.sharded.is_none(),
            "{}",
            super::shard::split_error(&self.name)
        );
        let master: BTreeMap<String, Tensor> = self.flat.named_master().into_iter().collect();
        let mut all: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(k, v)| match master.get(&k) {
                Some(m) => (k, m.shallow_clone()),
                None if v.is_floating_point() => (k, v.detach().to_kind(Kind::Float)),
                None => (k, v.detach()),
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The variables a sharded checkpoint keeps whole (in fp32 when floating): every one
    /// outside the part's pieces — frozen weights (a LoRA base) and buffers; all of them for a
    /// part that is not sharded.
    pub fn unsharded_weights(&self) -> Vec<(String, Tensor)> {
        let Some(pieces) = self.pieces() else {
            return self.weights();
        };
        let inside: std::collections::HashSet<String> = pieces
            .layout()
            .into_iter()
            .flat_map(|u| u.entries.into_iter().map(|(name, _)| name))
            .collect();
        let mut all: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(k, _)| !inside.contains(k))
            .map(|(k, v)| match v.is_floating_point() {
                true => (k, v.detach().to_kind(Kind::Float)),
                false => (k, v.detach()),
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Loads `tensors` (every variable by name, e.g. a checkpoint's) into the weights: the
    /// master weights in full precision, the model's in its own.
    pub fn load_weights(
        &self,
        tensors: &BTreeMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<()> {
        apt_mmdit::weights::load_tensors_strict(&self.vs, tensors, origin)?;
        self.flat.load_master(tensors);
        Ok(())
    }

    /// Copies the (master) weights into `target`, a store of the same model.
    pub fn copy_weights_to(&self, target: &nn::VarStore) {
        let weights: BTreeMap<String, Tensor> = self.weights().into_iter().collect();
        tch::no_grad(|| {
            for (k, mut v) in target.variables() {
                v.copy_(&weights[&k]);
            }
        });
    }

    /// Copies the weights to export into `target` (a store of the same model): the raw
    /// weights, then the EMA's averages of the trained ones when there is an EMA.
    pub fn copy_exported_to(&self, target: &nn::VarStore) -> Result<()> {
        self.copy_weights_to(target);
        match &self.ema {
            Some(ema) => ema.copy_to(target),
            None => Ok(()),
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
