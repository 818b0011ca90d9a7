//! A part's trainable variables as slices of one flat buffer (what PyTorch's multi-tensor
//! `foreach` optimizers and DDP's `gradient_as_bucket_view` get at): the optimizer, the EMA,
//! clipping, the non-finite check and the gradient all-reduce each run a handful of kernels
//! over one buffer instead of a few per variable, and nothing is copied to pack a bucket.
//!
//! Every trainable variable of the store is re-pointed (`set_data`) at its slice of the
//! buffer, in a fixed name order, and so is its gradient: autograd accumulates in place into
//! a gradient that exists, so the gradients of every micro-batch land in the flat gradient.
//!
//! Mixed precision ([`Precision::Bf16`]): the fp32 `master` buffer holds the trained weights
//! and the fp32 `grad` buffer their gradients; the model's variables are slices of a bf16 copy
//! of the master (its non-trainable variables are cast to bf16 too), their gradients slices of a
//! bf16 buffer that [`FlatParams::collect_grads`] adds into the fp32 one after every
//! micro-batch. The optimizer and the EMA update the fp32 master; [`FlatParams::sync_compute`]
//! copies it into the bf16 weights.

use std::collections::{BTreeMap, HashSet};

use tch::{nn, Kind, Tensor};

use super::precision::Precision;

/// Where one variable lives in the flat buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatEntry {
    /// The variable's name in its store.
    pub name: String,
    /// First element.
    pub offset: i64,
    /// Elements.
    pub numel: i64,
    /// The variable's shape.
    pub shape: Vec<i64>,
}

/// The flat buffers of one part (see the module docs).
#[derive(Debug)]
pub struct FlatParams {
    precision: Precision,
    entries: Vec<FlatEntry>,
    /// The store's variables, in entry order (handles sharing the store's tensors).
    vars: Vec<Tensor>,
    master: Tensor,
    grad: Tensor,
    /// bf16 runs: the model's weights and gradients.
    compute: Option<(Tensor, Tensor)>,
}

/// The names of `vs`'s trainable variables, sorted.
pub fn trainable_names(vs: &nn::VarStore) -> Vec<String> {
    let trainable: HashSet<usize> = vs
        .trainable_variables()
        .iter()
        .map(|t| t.data_ptr() as usize)
        .collect();
    let mut names: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| trainable.contains(&(v.data_ptr() as usize)))
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names
}

fn slice_ptr(buffer: &Tensor, offset: i64) -> usize {
    buffer.data_ptr() as usize + offset as usize * buffer.kind().elt_size_in_bytes()
}

impl FlatParams {
    /// Binds the trainable variables of `vs` (in `order`, or sorted by name) to fresh flat
    /// buffers in `precision`. Weights are taken from `previous` (the buffers this replaces,
    /// e.g. to change the order for ZeRO-1) where it holds them, else from the variables.
    ///
    /// # Panics
    /// When `order` is not a permutation of the trainable variables' names.
    pub fn new(
        vs: &nn::VarStore,
        precision: Precision,
        order: Option<&[String]>,
        previous: Option<&FlatParams>,
    ) -> Self {
        let names = trainable_names(vs);
        let names = match order {
            Some(order) => {
                let mut sorted = order.to_vec();
                sorted.sort();
                assert_eq!(
                    sorted, names,
                    "a flat layout names every trainable variable once"
                );
                order.to_vec()
            }
            None => names,
        };
        let all = vs.variables();
        let mut entries = Vec::with_capacity(names.len());
        let mut offset = 0;
        for name in names {
            let v = &all[&name];
            let numel = v.numel() as i64;
            entries.push(FlatEntry {
                name,
                offset,
                numel,
                shape: v.size(),
            });
            offset += numel;
        }
        let vars: Vec<Tensor> = entries
            .iter()
            .map(|e| all[&e.name].shallow_clone())
            .collect();
        let device = vs.device();
        let master = tch::no_grad(|| {
            let pieces: Vec<Tensor> = entries
                .iter()
                .zip(&vars)
                .map(|(e, v)| {
                    let from = previous.and_then(|p| p.master_of(&e.name));
                    from.unwrap_or_else(|| v.detach())
                        .to_kind(Kind::Float)
                        .reshape([-1])
                })
                .collect();
            if pieces.is_empty() {
                Tensor::zeros([0], (Kind::Float, device))
            } else {
                Tensor::cat(&pieces, 0)
            }
        });
        let grad = master.zeros_like();
        let compute = match precision {
            Precision::Fp32 => None,
            Precision::Bf16 => {
                let weights = master.to_kind(Kind::BFloat16);
                let grads = weights.zeros_like();
                Some((weights, grads))
            }
        };
        let flat = Self {
            precision,
            entries,
            vars,
            master,
            grad,
            compute,
        };
        if precision == Precision::Bf16 {
            // The rest of the model computes in bf16 too.
            let bound: HashSet<&str> = flat.entries.iter().map(|e| e.name.as_str()).collect();
            tch::no_grad(|| {
                for (name, mut v) in vs.variables() {
                    if !bound.contains(name.as_str()) && v.is_floating_point() {
                        v.set_data(&v.to_kind(Kind::BFloat16));
                    }
                }
            });
        }
        flat.bind_weights();
        flat.bind_grads();
        flat
    }

    /// Buffers that bind nothing (a sharded part's: its variables live in
    /// [`crate::train::shard::ShardedParams`]).
    pub fn unbound(precision: Precision, device: tch::Device) -> Self {
        let master = Tensor::zeros([0], (Kind::Float, device));
        Self {
            precision,
            entries: Vec::new(),
            vars: Vec::new(),
            grad: master.zeros_like(),
            compute: None,
            master,
        }
    }

    /// Points every variable at its slice of the weights the model computes with.
    fn bind_weights(&self) {
        let weights = self.compute_weights();
        tch::no_grad(|| {
            for (e, v) in self.entries.iter().zip(&self.vars) {
                let mut v = v.shallow_clone();
                v.set_data(
                    &weights
                        .narrow(0, e.offset, e.numel)
                        .view(e.shape.as_slice()),
                );
            }
        });
    }

    /// Gives every variable a gradient (a zero backward pass for those without one) and points
    /// it at its slice of the gradient buffer the backward pass writes.
    fn bind_grads(&self) {
        let missing: Vec<&Tensor> = self.vars.iter().filter(|v| !v.grad().defined()).collect();
        if !missing.is_empty() {
            let was: Vec<bool> = missing.iter().map(|v| v.requires_grad()).collect();
            for v in &missing {
                let _ = v.set_requires_grad(true);
            }
            let zero: Tensor = missing.iter().map(|v| v.sum(Kind::Float) * 0.0).fold(
                Tensor::zeros([], (Kind::Float, self.master.device())),
                |a, b| a + b,
            );
            zero.backward();
            for (v, was) in missing.iter().zip(was) {
                let _ = v.set_requires_grad(was);
            }
        }
        let grads = self.compute_grads();
        tch::no_grad(|| {
            for (e, v) in self.entries.iter().zip(&self.vars) {
                let mut g = v.grad();
                let mut slice = grads.narrow(0, e.offset, e.numel);
                slice.copy_(&g.reshape([-1]));
                g.set_data(&slice.view(e.shape.as_slice()));
            }
        });
    }

    /// The buffer the model's weights are slices of (the master in fp32 runs).
    fn compute_weights(&self) -> &Tensor {
        self.compute.as_ref().map_or(&self.master, |(w, _)| w)
    }

    /// The buffer the backward pass accumulates into (the fp32 gradient in fp32 runs).
    fn compute_grads(&self) -> &Tensor {
        self.compute.as_ref().map_or(&self.grad, |(_, g)| g)
    }

    /// The precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The layout, in order.
    pub fn entries(&self) -> &[FlatEntry] {
        &self.entries
    }

    /// The fp32 weights `[n]` (the optimizer and EMA update them).
    pub fn master(&self) -> &Tensor {
        &self.master
    }

    /// The fp32 gradients `[n]` (complete after [`Self::collect_grads`]).
    pub fn grad(&self) -> &Tensor {
        &self.grad
    }

    /// Elements in the buffers.
    pub fn numel(&self) -> i64 {
        self.master.numel() as i64
    }

    /// The master weights of variable `name`, shaped like it (a view).
    pub fn master_of(&self, name: &str) -> Option<Tensor> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        Some(
            self.master
                .narrow(0, e.offset, e.numel)
                .view(e.shape.as_slice()),
        )
    }

    /// `(name, master view)` in layout order.
    pub fn named_master(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| {
                let view = self.master.narrow(0, e.offset, e.numel);
                (e.name.clone(), view.view(e.shape.as_slice()))
            })
            .collect()
    }

    /// The contiguous element range `(start, len)` holding exactly the variables `names`.
    ///
    /// # Panics
    /// When they are not contiguous in the layout (ZeRO-1 orders the layout by owner).
    pub fn range_of(&self, names: &std::collections::BTreeSet<String>) -> (i64, i64) {
        let mine: Vec<&FlatEntry> = self
            .entries
            .iter()
            .filter(|e| names.contains(&e.name))
            .collect();
        let Some(first) = mine.first() else {
            return (0, 0);
        };
        let last = mine.last().expect("non-empty");
        let (start, end) = (first.offset, last.offset + last.numel);
        let count: i64 = mine.iter().map(|e| e.numel).sum();
        assert_eq!(
            count,
            end - start,
            "owned variables are contiguous in the layout"
        );
        (start, end - start)
    }

    /// Makes `named` (per-variable fp32 tensors, e.g. an optimizer slot or an EMA shadow)
    /// hold, for every variable of the element range `[start, start + len)`, a view of one
    /// buffer laid out like this one's slice, and returns that buffer. `buffer` is kept when
    /// `named` already views it; otherwise a new one is gathered from `named`, with `fill(e)`
    /// for a variable it lacks.
    pub fn bind_named(
        &self,
        named: &mut BTreeMap<String, Tensor>,
        buffer: Option<Tensor>,
        (start, len): (i64, i64),
        fill: impl Fn(&FlatEntry) -> Tensor,
    ) -> Tensor {
        let entries: Vec<&FlatEntry> = self
            .entries
            .iter()
            .filter(|e| e.offset >= start && e.offset + e.numel <= start + len && e.numel > 0)
            .collect();
        if let Some(buffer) = buffer.filter(|b| {
            b.numel() as i64 == len
                && entries.iter().all(|e| {
                    named
                        .get(&e.name)
                        .is_some_and(|t| t.data_ptr() as usize == slice_ptr(b, e.offset - start))
                })
        }) {
            return buffer;
        }
        let device = self.master.device();
        let buffer = tch::no_grad(|| {
            let pieces: Vec<Tensor> = entries
                .iter()
                .map(|e| {
                    named
                        .get(&e.name)
                        .map_or_else(|| fill(e), |t| t.to_kind(Kind::Float))
                        .reshape([-1])
                        .to_device(device)
                })
                .collect();
            if pieces.is_empty() {
                Tensor::zeros([0], (Kind::Float, device))
            } else {
                Tensor::cat(&pieces, 0)
            }
        });
        for e in entries {
            let view = buffer.narrow(0, e.offset - start, e.numel);
            named.insert(e.name.clone(), view.view(e.shape.as_slice()));
        }
        buffer
    }

    /// Zeroes the gradients, after re-binding any variable that was moved off its slice
    /// (e.g. by code that replaced its data): its current value becomes the master's.
    pub fn zero_grad(&self) {
        let weights = self.compute_weights();
        let mut moved = false;
        tch::no_grad(|| {
            for (e, v) in self.entries.iter().zip(&self.vars) {
                if v.data_ptr() as usize != slice_ptr(weights, e.offset) {
                    self.master
                        .narrow(0, e.offset, e.numel)
                        .copy_(&v.detach().reshape([-1]));
                    moved = true;
                }
            }
        });
        if moved {
            self.sync_compute();
            self.bind_weights();
        }
        let _ = self.grad.shallow_clone().zero_();
        if let Some((_, g)) = &self.compute {
            let _ = g.shallow_clone().zero_();
        }
    }

    /// After a micro-batch's backward pass: gathers a gradient autograd put elsewhere (a
    /// variable whose gradient was replaced) into the buffer and re-binds it; in bf16 runs adds
    /// the bf16 gradients into the fp32 ones and zeroes them (fp32 accumulation).
    pub fn collect_grads(&self) {
        let grads = self.compute_grads();
        tch::no_grad(|| {
            for (e, v) in self.entries.iter().zip(&self.vars) {
                let mut g = v.grad();
                if g.defined() && g.data_ptr() as usize != slice_ptr(grads, e.offset) {
                    let mut slice = grads.narrow(0, e.offset, e.numel);
                    let _ = slice.g_add_(&g.reshape([-1]).to_kind(slice.kind()));
                    g.set_data(&slice.view(e.shape.as_slice()));
                }
            }
            if let Some((_, g)) = &self.compute {
                let _ = self.grad.shallow_clone().g_add_(g);
                let _ = g.shallow_clone().zero_();
            }
        });
    }

    /// bf16 runs: copies the master weights into the weights the model computes with (after an
    /// optimizer step or a load). Nothing to do in fp32.
    pub fn sync_compute(&self) {
        if let Some((w, _)) = &self.compute {
            tch::no_grad(|| w.shallow_clone().copy_(&self.master));
        }
    }

    /// Copies `tensors` (by variable name; others ignored) into the master weights and the
    /// model's weights.
    pub fn load_master(&self, tensors: &BTreeMap<String, Tensor>) {
        tch::no_grad(|| {
            for e in &self.entries {
                if let Some(t) = tensors.get(&e.name) {
                    self.master
                        .narrow(0, e.offset, e.numel)
                        .copy_(&t.reshape([-1]));
                }
            }
        });
        self.sync_compute();
    }
}
