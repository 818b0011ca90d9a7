//! Optimizers over `VarStore` variables whose state can be saved and restored (tch's built-in
//! optimizers wrap C++ ones that cannot): AdamW and RMSProp with PyTorch's exact update rules
//! (checked against `torch.optim` on a fixture).
//!
//! State is keyed by variable name, so it survives rebuilding the model; it is written as
//! tensors named `<prefix>.<slot>.<variable>` (the trainer's prefix is `optimizer.<part>`) next
//! to a small JSON description.

mod config;

use std::collections::{BTreeMap, BTreeSet};

use tch::{nn, Kind, Tensor};

pub use config::OptimizerConfig;

use super::flat::FlatParams;
use crate::error::{FlowError, Result};

/// An optimizer with explicit, saveable state.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// Updates applied (AdamW's bias correction uses it): a 0-dim f64 tensor on the
    /// parameters' device, so that an update the non-finite check turned off does not count
    /// without the host reading anything.
    applied: Tensor,
    /// `slot name → variable name → tensor` (views of `flat` in the loop's flat path).
    slots: BTreeMap<String, BTreeMap<String, Tensor>>,
    /// The flat path's state: `slot name → [len]` over the owned element range.
    flat: BTreeMap<String, Tensor>,
    /// ZeRO-1: the variables this rank updates (and keeps state for); `None`: all of them.
    owned: Option<BTreeSet<String>>,
}

/// `a·ok + (1 − ok)`: the factor `a` when the update is applied (`ok` = 1), 1 when skipped.
fn gated(ok: &Tensor, a: f64) -> Tensor {
    ok * a + (1.0 - ok)
}

/// Hyper-parameters and the gate of one update, shared by every variable.
struct UpdateScalars {
    lr: f64,
    /// 1 (apply) or 0 (leave parameters and state as they were), 0-dim f64.
    ok: Tensor,
    /// AdamW: `lr·ok/(1 − β1ᵏ)` and `√(1 − β2ᵏ)`, 0-dim f64.
    adam: Option<(Tensor, Tensor)>,
}

impl UpdateScalars {
    fn new(config: &OptimizerConfig, lr: f64, ok: &Tensor, applied: &Tensor) -> Self {
        let adam = match *config {
            OptimizerConfig::Adamw {
                betas: [b1, b2], ..
            } => {
                // Never 0 (a skipped first update divides by it, then multiplies by ok = 0).
                let k = applied.clamp_min(1.0);
                let power =
                    |b: f64| -> Tensor { Tensor::full([], b, (Kind::Double, k.device())).pow(&k) };
                let bias1: Tensor = 1.0 - power(b1);
                let bias2: Tensor = 1.0 - power(b2);
                Some((ok * lr / bias1, bias2.sqrt()))
            }
            OptimizerConfig::Rmsprop { .. } => None,
        };
        Self {
            lr,
            ok: ok.shallow_clone(),
            adam,
        }
    }
}

/// One update of parameters `p` with gradients `g` (zero where the update is skipped) and
/// state `state` (the config's slots, in [`Optimizer::slot_names`] order), in place. The same
/// code runs per variable and over a whole flat buffer.
fn update(
    config: &OptimizerConfig,
    s: &UpdateScalars,
    p: &mut Tensor,
    g: &Tensor,
    state: &mut [Tensor],
) {
    let ok = &s.ok;
    match *config {
        OptimizerConfig::Adamw {
            betas: [b1, b2],
            eps,
            weight_decay,
            ..
        } => {
            let (step_size, bias2_sqrt) = s.adam.as_ref().expect("AdamW scalars");
            let [m, v] = state else {
                unreachable!("AdamW keeps two slots")
            };
            if weight_decay != 0.0 {
                let _ = p.g_mul_(&gated(ok, 1.0 - s.lr * weight_decay));
            }
            let _ = m.g_mul_(&gated(ok, b1)).g_add_(&(g * (1.0 - b1)));
            let _ = v.g_mul_(&gated(ok, b2)).g_add_(&(g.square() * (1.0 - b2)));
            let denom = v.sqrt() / bias2_sqrt + eps;
            let _ = p.g_sub_(&((&*m / denom) * step_size));
        }
        OptimizerConfig::Rmsprop {
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            ..
        } => {
            let g = if weight_decay != 0.0 {
                g + &*p * (ok * weight_decay)
            } else {
                g.shallow_clone()
            };
            let (sq, rest) = state.split_first_mut().expect("RMSProp keeps square_avg");
            let _ = sq
                .g_mul_(&gated(ok, alpha))
                .g_add_(&(g.square() * (1.0 - alpha)));
            let mut rest = rest.iter_mut();
            let avg = if centered {
                let ga = rest.next().expect("grad_avg");
                let _ = ga.g_mul_(&gated(ok, alpha)).g_add_(&(&g * (1.0 - alpha)));
                (&*sq - ga.square()).sqrt() + eps
            } else {
                sq.sqrt() + eps
            };
            if momentum > 0.0 {
                let buf = rest.next().expect("momentum_buffer");
                let _ = buf.g_mul_(&gated(ok, momentum)).g_add_(&(&g / avg));
                let _ = p.g_sub_(&(&*buf * (ok * s.lr)));
            } else {
                let _ = p.g_sub_(&((&g / avg) * s.lr));
            }
        }
    }
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(config: OptimizerConfig) -> Result<Self> {
        config.validate("optimizer")?;
        Ok(Self {
            config,
            applied: Tensor::zeros([], (Kind::Double, tch::Device::Cpu)),
            slots: BTreeMap::new(),
            flat: BTreeMap::new(),
            owned: None,
        })
    }

    /// Restricts updates and state to the variables named in `owned` (ZeRO-1: this rank's
    /// share; the state of the others is dropped), or lifts the restriction (`None`).
    pub fn set_owned(&mut self, owned: Option<BTreeSet<String>>) {
        self.owned = owned;
        self.flat.clear();
        self.drop_unowned();
    }

    /// Whether this optimizer updates variable `name`.
    pub fn owns(&self, name: &str) -> bool {
        self.owned.as_ref().is_none_or(|o| o.contains(name))
    }

    /// The variables this optimizer updates (`None`: all).
    pub fn owned(&self) -> Option<&BTreeSet<String>> {
        self.owned.as_ref()
    }

    /// Drops the state of variables this optimizer does not own (after a checkpoint gathered
    /// the whole state, or a resume loaded it).
    pub fn drop_unowned(&mut self) {
        if let Some(owned) = &self.owned {
            for vars in self.slots.values_mut() {
                vars.retain(|name, _| owned.contains(name));
            }
        }
    }

    /// The state slots this optimizer keeps per variable (`exp_avg`, `exp_avg_sq` for AdamW;
    /// `square_avg`, then `grad_avg` if centred and `momentum_buffer` with momentum, for
    /// RMSProp).
    pub fn slot_names(&self) -> Vec<&'static str> {
        match self.config {
            OptimizerConfig::Adamw { .. } => vec!["exp_avg", "exp_avg_sq"],
            OptimizerConfig::Rmsprop {
                centered, momentum, ..
            } => {
                let mut v = vec!["square_avg"];
                if centered {
                    v.push("grad_avg");
                }
                if momentum > 0.0 {
                    v.push("momentum_buffer");
                }
                v
            }
        }
    }

    /// Slot `slot` of variable `name` (zeros shaped like `like` when it has none yet).
    pub(crate) fn slot_or_zeros(&mut self, slot: &str, name: &str, like: &Tensor) -> Tensor {
        self.slot(slot, name, like)
    }

    /// Sets slot `slot` of variable `name` (a copy received from its owner).
    pub(crate) fn insert_slot(&mut self, slot: &str, name: &str, value: Tensor) {
        self.slots
            .entry(slot.to_string())
            .or_default()
            .insert(name.to_string(), value);
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates applied so far (reads the device counter: a host synchronisation).
    pub fn steps_taken(&self) -> u64 {
        self.applied.double_value(&[]) as u64
    }

    fn slot(&mut self, slot: &str, name: &str, like: &Tensor) -> Tensor {
        self.slots
            .entry(slot.to_string())
            .or_default()
            .entry(name.to_string())
            .or_insert_with(|| like.detach().to_kind(Kind::Float).zeros_like())
            .shallow_clone()
    }

    /// Counts an update (when `ok` is 1) and returns its scalars.
    fn begin(&mut self, lr: f64, ok: &Tensor) -> UpdateScalars {
        if self.applied.device() != ok.device() {
            self.applied = self.applied.to_device(ok.device());
        }
        let ok = ok.to_kind(Kind::Double);
        let _ = self.applied.g_add_(&ok);
        UpdateScalars::new(&self.config, lr, &ok, &self.applied)
    }

    /// One update of every trainable variable `p` of `vs` that has a gradient `g`, at learning
    /// rate `lr` (the schedule's value for this step); `k` counts updates from 1.
    ///
    /// * AdamW: `p ← p·(1 − lr·wd)`, `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`,
    ///   `p ← p − lr/(1 − β1ᵏ) · m / (√v/√(1 − β2ᵏ) + eps)`.
    /// * RMSProp: `g ← g + wd·p`, `s ← α·s + (1 − α)·g²`, `a = √s + eps` (centred:
    ///   `ḡ ← α·ḡ + (1 − α)·g`, `a = √(s − ḡ²) + eps`); `p ← p − lr·g/a`, or with momentum `μ`:
    ///   `b ← μ·b + g/a`, `p ← p − lr·b`.
    ///
    /// This walks the variables one by one; the training loop updates a part's
    /// [`FlatParams`] at once with [`Optimizer::step_flat`] (the same arithmetic).
    pub fn step(&mut self, vs: &nn::VarStore, lr: f64) {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let Some((_, first)) = named.first() else {
            return;
        };
        let one = Tensor::ones([], (Kind::Double, first.device()));
        let scalars = self.begin(lr, &one);
        let slots = self.slot_names();
        tch::no_grad(|| {
            for (name, mut p) in named {
                let g = p.grad();
                if !g.defined() || !self.owns(&name) {
                    continue;
                }
                let mut state: Vec<Tensor> =
                    slots.iter().map(|s| self.slot(s, &name, &p)).collect();
                update(&self.config, &scalars, &mut p, &g, &mut state);
            }
        });
    }

    /// One update of the master weights of `flat` (the loop's path; see [`Optimizer::step`]
    /// for the rules), over the owned variables' element range, with the whole update turned
    /// off on the device when `ok` (a 0-dim tensor) is 0 — gradients must then be zero (the
    /// loop zeroes them), and the state and update count stay as they were.
    pub fn step_flat(&mut self, flat: &FlatParams, lr: f64, ok: &Tensor) {
        let (start, len) = match &self.owned {
            None => (0, flat.numel()),
            Some(owned) => flat.range_of(owned),
        };
        self.bind_flat_state(flat, start, len);
        let scalars = self.begin(lr, ok);
        let mut p = flat.master().narrow(0, start, len);
        let g = flat.grad().narrow(0, start, len);
        let mut state: Vec<Tensor> = self
            .slot_names()
            .iter()
            .map(|s| self.flat[*s].shallow_clone())
            .collect();
        tch::no_grad(|| update(&self.config, &scalars, &mut p, &g, &mut state));
    }

    /// One update of a sharded part's pieces (`master`, `grad`: this rank's, see
    /// [`crate::train::shard`]); the state is kept as pieces too (see [`Self::keep_pieces`]).
    pub fn step_pieces(&mut self, master: &Tensor, grad: &Tensor, lr: f64, ok: &Tensor) {
        for slot in self.slot_names() {
            self.flat
                .entry(slot.to_string())
                .or_insert_with(|| master.zeros_like());
        }
        let scalars = self.begin(lr, ok);
        let mut p = master.shallow_clone();
        let mut state: Vec<Tensor> = self
            .slot_names()
            .iter()
            .map(|s| self.flat[*s].shallow_clone())
            .collect();
        tch::no_grad(|| update(&self.config, &scalars, &mut p, grad, &mut state));
    }

    /// A sharded part's state: this rank's pieces per slot (empty before the first update).
    pub(crate) fn piece_slots(&self) -> Vec<(String, Tensor)> {
        self.flat
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect()
    }

    /// Sharding: replaces the per-variable state with this rank's pieces, `pieces(named)` per
    /// slot (a slot with no state yet becomes zeros on the first update).
    pub(crate) fn keep_pieces(&mut self, pieces: impl Fn(&BTreeMap<String, Tensor>) -> Tensor) {
        self.flat.clear();
        for (slot, named) in std::mem::take(&mut self.slots) {
            self.flat.insert(slot, pieces(&named));
        }
        self.owned = None;
    }

    /// Un-sharding: per-variable state again, `whole(pieces)` per slot (a collective: every
    /// rank calls it for the same slots, in order).
    pub(crate) fn gather_pieces(
        &mut self,
        whole: impl Fn(&Tensor) -> Result<BTreeMap<String, Tensor>>,
    ) -> Result<()> {
        let pieces = std::mem::take(&mut self.flat);
        self.slots.clear();
        for (slot, local) in pieces {
            self.slots.insert(slot, whole(&local)?);
        }
        Ok(())
    }

    /// Makes the state of the owned range one flat tensor per slot whose per-variable views
    /// are the named state (after a load, a ZeRO-1 gather or a new layout, from the named
    /// state; zeros where there is none).
    fn bind_flat_state(&mut self, flat: &FlatParams, start: i64, len: i64) {
        for slot in self.slot_names() {
            let named = self.slots.entry(slot.to_string()).or_default();
            let buffer = flat.bind_named(named, self.flat.remove(slot), (start, len), |e| {
                Tensor::zeros([e.numel], (Kind::Float, flat.master().device()))
            });
            self.flat.insert(slot.to_string(), buffer);
        }
    }

    /// The state as named tensors (`<prefix>.<slot>.<variable>`).
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|(slot, vars)| {
                vars.iter()
                    .map(move |(name, t)| (format!("{prefix}.{slot}.{name}"), t.shallow_clone()))
            })
            .collect()
    }

    /// Restores the state saved by [`Optimizer::state_tensors`] under `prefix` after `steps`
    /// updates. Tensors under other prefixes are ignored.
    pub fn load_state(
        &mut self,
        tensors: &[(String, Tensor)],
        prefix: &str,
        steps: u64,
        vs: &nn::VarStore,
    ) -> Result<()> {
        let vars = vs.variables();
        let mut slots: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
        let prefix = format!("{prefix}.");
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let (slot, name) = rest.split_once('.').ok_or_else(|| FlowError::File {
                path: key.into(),
                reason: "malformed optimizer state name".into(),
            })?;
            let var = vars.get(name).ok_or_else(|| FlowError::File {
                path: key.into(),
                reason: format!("optimizer state for unknown variable {name}"),
            })?;
            if var.size() != t.size() {
                return Err(FlowError::File {
                    path: key.into(),
                    reason: format!("shape {:?} vs variable {:?}", t.size(), var.size()),
                });
            }
            slots.entry(slot.to_string()).or_default().insert(
                name.to_string(),
                t.to_kind(Kind::Float).to_device(var.device()),
            );
        }
        self.slots = slots;
        self.flat.clear();
        self.applied = Tensor::full([], steps as f64, (Kind::Double, vs.device()));
        Ok(())
    }
}
