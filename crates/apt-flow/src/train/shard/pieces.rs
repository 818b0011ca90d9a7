//! Moving whole per-variable tensors (weights, optimizer state, EMA) to and from a sharded
//! part's pieces.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::ShardedParams;
use crate::error::Result;
use crate::train::checkpoint_shards::UnitLayout;

impl ShardedParams {
    /// This rank's pieces of `named` (whole per-variable tensors, e.g. an optimizer slot or an
    /// EMA), laid out like [`Self::master`]; zeros for a variable `named` lacks.
    pub fn pieces_of(&self, named: &BTreeMap<String, Tensor>) -> Tensor {
        let world = self.collective.world_size() as i64;
        let rank = self.collective.rank() as i64;
        tch::no_grad(|| {
            let pieces: Vec<Tensor> = self
                .units
                .iter()
                .map(|unit| {
                    let mut parts: Vec<Tensor> = unit
                        .entries
                        .iter()
                        .map(|(name, _, n, _)| match named.get(name) {
                            Some(t) => t.to_kind(Kind::Float).to_device(self.device).reshape([-1]),
                            None => Tensor::zeros([*n], (Kind::Float, self.device)),
                        })
                        .collect();
                    let pad = unit.piece * world - unit.numel;
                    parts.push(Tensor::zeros([pad], (Kind::Float, self.device)));
                    Tensor::cat(&parts, 0)
                        .narrow(0, rank * unit.piece, unit.piece)
                        .copy()
                })
                .collect();
            if pieces.is_empty() {
                Tensor::zeros([0], (Kind::Float, self.device))
            } else {
                Tensor::cat(&pieces, 0)
            }
        })
    }

    /// The whole per-variable tensors (fp32) of `local`, a buffer laid out like
    /// [`Self::master`] (a collective: every rank calls it).
    pub fn gather_named(&self, local: &Tensor) -> Result<BTreeMap<String, Tensor>> {
        let mut named = BTreeMap::new();
        for unit in &self.units {
            let all = self
                .collective
                .all_gather(&local.narrow(0, unit.local, unit.piece).contiguous())?;
            for (name, offset, n, shape) in &unit.entries {
                named.insert(
                    name.clone(),
                    all.narrow(0, *offset, *n).view(shape.as_slice()).copy(),
                );
            }
        }
        Ok(named)
    }

    /// Makes every variable whole again, holding `master` (whole fp32 weights by name) with
    /// zero gradients of its shape — the state a [`FlatParams`] is built from.
    pub fn restore_whole(&self, master: &BTreeMap<String, Tensor>) {
        for pending in self.pending.borrow_mut().iter_mut() {
            // Waits for a gather started ahead before its buffer goes.
            drop(pending.take());
        }
        for u in 0..self.units.len() {
            self.gathered.borrow_mut()[u] = None;
        }
        tch::no_grad(|| {
            for unit in &self.units {
                for ((name, ..), v) in unit.entries.iter().zip(&unit.vars) {
                    let mut v = v.shallow_clone();
                    v.set_data(&master[name]);
                    let mut g = v.grad();
                    if g.defined() {
                        g.set_data(&master[name].zeros_like());
                    }
                }
            }
        });
    }

    /// How this part's units tile its variables (what a sharded checkpoint records).
    pub fn layout(&self) -> Vec<UnitLayout> {
        self.units
            .iter()
            .map(|u| UnitLayout {
                entries: u
                    .entries
                    .iter()
                    .map(|(name, _, _, shape)| (name.clone(), shape.clone()))
                    .collect(),
                numel: u.numel,
                piece: u.piece,
                local: u.local,
            })
            .collect()
    }
}
