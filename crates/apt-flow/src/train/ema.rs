//! Exponential moving average of model weights (`shadow ← d·shadow + (1 − d)·weights`), kept
//! by variable name so it can be saved, restored and copied into a model for sampling.

use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

use super::flat::FlatParams;
use crate::error::{FlowError, Result};

/// EMA weights (fp32).
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    /// By variable name (views of `flat` for the trained variables on the loop's path).
    shadow: BTreeMap<String, Tensor>,
    /// The trained variables' shadow in a part's [`FlatParams`] layout.
    flat: Option<Tensor>,
}

impl Ema {
    /// Starts from the current weights of the trainable variables of `vs` (a frozen variable
    /// never changes: its average is itself, so it is not kept — a LoRA run keeps the
    /// adapters' averages only).
    pub fn new(vs: &nn::VarStore, decay: f64) -> Self {
        let trainable: std::collections::HashSet<usize> = vs
            .trainable_variables()
            .iter()
            .map(|t| t.data_ptr() as usize)
            .collect();
        let shadow = tch::no_grad(|| {
            vs.variables()
                .into_iter()
                .filter(|(_, v)| trainable.contains(&(v.data_ptr() as usize)))
                .map(|(k, v)| (k, v.detach().to_kind(Kind::Float).copy()))
                .collect()
        });
        Self {
            decay,
            shadow,
            flat: None,
        }
    }

    /// The decay `d`.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// One update from the current weights `w`: `shadow ← d·shadow + (1 − d)·w`.
    pub fn update(&mut self, vs: &nn::VarStore) {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, shadow) in self.shadow.iter_mut() {
                if let Some(v) = vars.get(name) {
                    let _ = shadow
                        .g_mul_scalar_(self.decay)
                        .g_add_(&(v * (1.0 - self.decay)));
                }
            }
        });
    }

    /// One update from the master weights of `flat`, as one operation over the buffer, turned
    /// off on the device when `ok` (a 0-dim tensor) is 0: `shadow ← d·shadow + (1 − d)·w`.
    /// Variables outside the layout (frozen ones) do not change and are not updated.
    pub fn update_flat(&mut self, flat: &FlatParams, ok: &Tensor) {
        self.bind(flat);
        let shadow = self.flat.as_mut().expect("bound");
        let ok = ok.to_kind(Kind::Double);
        tch::no_grad(|| {
            let d = &ok * self.decay + (1.0 - &ok);
            let _ = shadow
                .g_mul_(&d)
                .g_add_(&(flat.master() * (&ok * (1.0 - self.decay))));
        });
    }

    /// One update from a sharded part's master pieces (the shadow is kept as pieces too, see
    /// [`Self::keep_pieces`]).
    pub fn update_pieces(&mut self, master: &Tensor, ok: &Tensor) {
        let shadow = self.flat.get_or_insert_with(|| master.copy());
        let ok = ok.to_kind(Kind::Double);
        tch::no_grad(|| {
            let d = &ok * self.decay + (1.0 - &ok);
            let _ = shadow
                .g_mul_(&d)
                .g_add_(&(master * (&ok * (1.0 - self.decay))));
        });
    }

    /// A sharded part's shadow: this rank's pieces.
    pub(crate) fn pieces(&self) -> Option<&Tensor> {
        self.shadow
            .is_empty()
            .then_some(self.flat.as_ref())
            .flatten()
    }

    /// Sharding: keeps only this rank's pieces of the shadow, `pieces(shadow)`.
    pub(crate) fn keep_pieces(&mut self, pieces: impl Fn(&BTreeMap<String, Tensor>) -> Tensor) {
        self.flat = Some(pieces(&self.shadow));
        self.shadow.clear();
    }

    /// Un-sharding: the whole shadow again, `whole(pieces)` (a collective).
    pub(crate) fn gather_pieces(
        &mut self,
        whole: impl Fn(&Tensor) -> Result<BTreeMap<String, Tensor>>,
    ) -> Result<()> {
        if let Some(local) = self.flat.take() {
            self.shadow = whole(&local)?;
        }
        Ok(())
    }

    /// Makes the shadow of `flat`'s variables one tensor in its layout (unless it already is).
    fn bind(&mut self, flat: &FlatParams) {
        let buffer = flat.bind_named(&mut self.shadow, self.flat.take(), (0, flat.numel()), |e| {
            flat.master().narrow(0, e.offset, e.numel).copy()
        });
        self.flat = Some(buffer);
    }

    /// Copies the EMA weights into the same-named variables of `vs` (e.g. a separate model used
    /// for sampling; its frozen variables must already hold the part's).
    pub fn copy_to(&self, vs: &nn::VarStore) -> Result<()> {
        if self.shadow.is_empty() && self.flat.is_some() {
            return Err(FlowError::Collective(
                "the EMA is split over the ranks (shard = gradients or full): gather it first"
                    .into(),
            ));
        }
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, shadow) in &self.shadow {
                let mut v = vars
                    .get(name)
                    .ok_or_else(|| FlowError::File {
                        path: name.into(),
                        reason: "EMA holds a variable the model does not have".into(),
                    })?
                    .shallow_clone();
                v.copy_(shadow);
            }
            Ok(())
        })
    }

    /// The EMA weights as `<prefix>.<variable>` tensors.
    pub fn state_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(k, v)| (format!("{prefix}.{k}"), v.shallow_clone()))
            .collect()
    }

    /// Restores from `<prefix>.<variable>` tensors (every variable of the EMA must be present).
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], prefix: &str) -> Result<()> {
        let p = format!("{prefix}.");
        let found: BTreeMap<&str, &Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(&p)?, t)))
            .collect();
        for (name, shadow) in self.shadow.iter_mut() {
            let t = found.get(name.as_str()).ok_or_else(|| FlowError::File {
                path: format!("{p}{name}").into(),
                reason: "missing from the checkpoint".into(),
            })?;
            if t.size() != shadow.size() {
                return Err(FlowError::File {
                    path: format!("{p}{name}").into(),
                    reason: format!("shape {:?}, the model's is {:?}", t.size(), shadow.size()),
                });
            }
            // In place: the shadow may be a view of the flat buffer.
            tch::no_grad(|| shadow.copy_(t));
        }
        Ok(())
    }
}
