//! A part's trainable variables split into per-unit pieces over the ranks (see the module
//! docs of [`super`]), with the gather, release and reduce-scatter of each unit.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use apt_mmdit::sharding::{BlockTag, BlockUse, BlockWeights};
use tch::{nn, Device, Kind, Tensor};

use super::{ShardMode, ShardStats};
use crate::error::Result;
use crate::train::collective::{Collective, Pending};
use crate::train::flat::FlatParams;
use crate::train::precision::Precision;

/// One unit: a block's trainable variables, or the rest.
#[derive(Debug)]
pub(super) struct Unit {
    /// The block's name prefix (`None`: the rest unit).
    pub(super) prefix: Option<String>,
    /// `(name, offset in the unit, numel, shape)`, in name order.
    pub(super) entries: Vec<(String, i64, i64, Vec<i64>)>,
    /// The variables, in entry order (handles sharing the store's tensors).
    pub(super) vars: Vec<Tensor>,
    /// Elements.
    pub(super) numel: i64,
    /// Elements per rank, `⌈numel / N⌉`.
    pub(super) piece: i64,
    /// Where this rank's piece starts in the local buffers.
    pub(super) local: i64,
}

/// A gathered unit: the whole weights in compute precision, and their gradients while the
/// part is being trained.
#[derive(Debug)]
pub(super) struct Gathered {
    weights: Tensor,
    grads: Option<Tensor>,
    /// Used in a forward whose graph keeps the weights.
    in_graph: bool,
}

/// A part's weights as this rank's pieces (see [`super`]).
pub struct ShardedParams {
    pub(super) mode: ShardMode,
    pub(super) collective: Rc<dyn Collective>,
    pub(super) compute_kind: Kind,
    pub(super) device: Device,
    pub(super) units: Vec<Unit>,
    pub(super) by_prefix: HashMap<String, usize>,
    /// Every variable of the store by name (to tell this store's blocks from others').
    vars: HashMap<String, Tensor>,
    pub(super) master: Tensor,
    pub(super) grad: Tensor,
    pub(super) gathered: RefCell<Vec<Option<Gathered>>>,
    /// Sizes, the peak of whole weights, gathers (and the elements whole now).
    pub(super) stats: RefCell<(ShardStats, i64)>,
    /// `full`: gathers started ahead of use (the next block's, see `prefetch.rs`).
    pub(super) pending: RefCell<Vec<Option<Box<dyn Pending>>>>,
    /// `full`: the block last gathered by the hooks (the direction the model walks).
    pub(super) last_block: Cell<Option<usize>>,
    /// `full`: the unit of each block index.
    pub(super) unit_of_block: HashMap<usize, usize>,
}

impl std::fmt::Debug for ShardedParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ShardedParams {{ mode: {}, units: {}, local: {} }}",
            self.mode,
            self.units.len(),
            self.master.numel()
        )
    }
}

/// The block index of a unit's prefix (`…blocks.<i>`).
pub(super) fn block_index(prefix: &str) -> Option<usize> {
    prefix.rsplit('.').next()?.parse().ok()
}

/// The block prefix of a variable name: up to `<…>blocks.<i>`, if there is one.
pub(crate) fn block_prefix(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    (0..parts.len().saturating_sub(2)).find_map(|j| {
        (parts[j].ends_with("blocks") && parts[j + 1].bytes().all(|b| b.is_ascii_digit()))
            .then(|| parts[..j + 2].join("."))
    })
}

fn collective_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl ShardedParams {
    /// Splits the trainable variables of `vs`, laid out in `flat` (whose master weights are the
    /// same on every rank), over `collective`'s ranks. The caller drops `flat` afterwards and
    /// calls [`Self::start`].
    pub fn new(
        vs: &nn::VarStore,
        flat: &FlatParams,
        collective: Rc<dyn Collective>,
        mode: ShardMode,
    ) -> Self {
        assert!(
            mode.splits_weights(),
            "only gradients and full split weights"
        );
        let world = collective.world_size() as i64;
        let rank = collective.rank() as i64;
        let store = vs.variables();
        let mut grouped: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for e in flat.entries() {
            grouped
                .entry(block_prefix(&e.name))
                .or_default()
                .push(e.name.clone());
        }
        let (mut units, mut local, mut pieces) = (Vec::new(), 0, Vec::new());
        for (prefix, names) in grouped {
            let mut entries = Vec::new();
            let mut offset = 0;
            for name in names {
                let v = &store[&name];
                let n = v.numel() as i64;
                entries.push((name, offset, n, v.size()));
                offset += n;
            }
            let piece = (offset + world - 1) / world;
            let whole = tch::no_grad(|| {
                let parts: Vec<Tensor> = entries
                    .iter()
                    .map(|(name, ..)| flat.master_of(name).expect("laid out").reshape([-1]))
                    .collect();
                let joined = Tensor::cat(&parts, 0);
                Tensor::cat(
                    &[
                        joined.shallow_clone(),
                        joined.zeros_like().narrow(0, 0, piece * world - offset),
                    ],
                    0,
                )
            });
            pieces.push(whole.narrow(0, rank * piece, piece).copy());
            units.push(Unit {
                vars: entries
                    .iter()
                    .map(|(n, ..)| store[n].shallow_clone())
                    .collect(),
                prefix,
                entries,
                numel: offset,
                piece,
                local,
            });
            local += piece;
        }
        let device = vs.device();
        let master = if pieces.is_empty() {
            Tensor::zeros([0], (Kind::Float, device))
        } else {
            Tensor::cat(&pieces, 0)
        };
        let by_prefix = units
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Some((u.prefix.clone()?, i)))
            .collect();
        let count = units.len();
        let unit_of_block = units
            .iter()
            .enumerate()
            .filter_map(|(u, unit)| Some((block_index(unit.prefix.as_deref()?)?, u)))
            .collect();
        let stats = ShardStats {
            whole_elements: units.iter().map(|u| u.numel).sum(),
            local_elements: master.numel() as i64,
            ..ShardStats::default()
        };
        Self {
            stats: RefCell::new((stats, 0)),
            mode,
            collective,
            compute_kind: match flat.precision() {
                Precision::Fp32 => Kind::Float,
                Precision::Bf16 => Kind::BFloat16,
            },
            device,
            units,
            by_prefix,
            vars: store.into_iter().collect(),
            grad: master.zeros_like(),
            master,
            gathered: RefCell::new((0..count).map(|_| None).collect()),
            pending: RefCell::new((0..count).map(|_| None).collect()),
            last_block: Cell::new(None),
            unit_of_block,
        }
    }

    /// Takes the whole weights away (`full`) or gathers every unit (`gradients`).
    pub fn start(&self) -> Result<()> {
        for u in 0..self.units.len() {
            match self.mode {
                ShardMode::Full => self.free(u),
                _ => self.gather(u)?,
            }
        }
        Ok(())
    }

    /// What this rank held so far.
    pub fn stats(&self) -> ShardStats {
        self.stats.borrow().0
    }

    /// The mode.
    pub fn mode(&self) -> ShardMode {
        self.mode
    }

    /// This rank's fp32 master weights (every unit's piece, end to end).
    pub fn master(&self) -> &Tensor {
        &self.master
    }

    /// This rank's fp32 gradients (means over ranks), laid out like [`Self::master`].
    pub fn grad(&self) -> &Tensor {
        &self.grad
    }

    /// Zeroes this rank's gradients.
    pub fn zero_grad(&self) {
        let _ = self.grad.shallow_clone().zero_();
    }

    /// Whether the part is being trained now (its variables require grad).
    fn training(&self, u: usize) -> bool {
        self.units[u]
            .vars
            .first()
            .is_some_and(|v| v.requires_grad())
    }

    /// Gathers unit `u`'s weights (unless gathered) and, when the part is trained, gives them
    /// zeroed gradients.
    pub(super) fn gather(&self, u: usize) -> Result<()> {
        if self.gathered.borrow()[u].is_some() {
            return Ok(());
        }
        let unit = &self.units[u];
        let started = self.pending.borrow_mut()[u].take();
        let all = match started {
            Some(pending) => pending.wait()?,
            None => {
                let all = self.collective.all_gather(&self.compute_piece(u))?;
                self.count_whole(unit.numel);
                all
            }
        };
        let weights = all.narrow(0, 0, unit.numel);
        let grads = self.training(u).then(|| weights.zeros_like());
        tch::no_grad(|| {
            for ((_, offset, n, shape), v) in unit.entries.iter().zip(&unit.vars) {
                let mut v = v.shallow_clone();
                v.set_data(&weights.narrow(0, *offset, *n).view(shape.as_slice()));
                let mut g = v.grad();
                if let (Some(grads), true) = (&grads, g.defined()) {
                    g.set_data(&grads.narrow(0, *offset, *n).view(shape.as_slice()));
                }
            }
        });
        self.stats.borrow_mut().0.gathers += 1;
        self.gathered.borrow_mut()[u] = Some(Gathered {
            weights,
            grads,
            in_graph: false,
        });
        Ok(())
    }

    /// Points unit `u`'s variables (and gradients) at one-element placeholders, freeing the
    /// whole weights.
    pub(super) fn free(&self, u: usize) {
        // A gather started ahead and never used: wait for it (it writes into its buffer), drop.
        if self.pending.borrow_mut()[u].take().is_some() {
            self.stats.borrow_mut().1 -= self.units[u].numel;
        }
        if self.gathered.borrow()[u].is_some() {
            self.stats.borrow_mut().1 -= self.units[u].numel;
        }
        tch::no_grad(|| {
            for v in &self.units[u].vars {
                let mut v = v.shallow_clone();
                v.set_data(&Tensor::zeros([1], (self.compute_kind, self.device)));
                let mut g = v.grad();
                if g.defined() {
                    g.set_data(&Tensor::zeros([1], (g.kind(), self.device)));
                }
            }
        });
        self.gathered.borrow_mut()[u] = None;
    }

    /// Reduce-scatters unit `u`'s gradients (when it has any) into this rank's piece as their
    /// mean over ranks, and zeroes them.
    fn reduce(&self, u: usize) -> Result<()> {
        let gathered = self.gathered.borrow();
        let Some(grads) = gathered[u].as_ref().and_then(|g| g.grads.as_ref()) else {
            return Ok(());
        };
        let unit = &self.units[u];
        let world = self.collective.world_size() as i64;
        let padded = tch::no_grad(|| {
            let g = grads.to_kind(Kind::Float);
            let pad = g.zeros_like().narrow(0, 0, unit.piece * world - unit.numel);
            Tensor::cat(&[g, pad], 0)
        });
        let mine = self.collective.reduce_scatter_sum(&padded)?;
        tch::no_grad(|| {
            let _ = self
                .grad
                .narrow(0, unit.local, unit.piece)
                .g_add_(&(mine / world as f64));
            let _ = grads.shallow_clone().zero_();
        });
        Ok(())
    }

    /// After a micro-batch's backward pass: the gradients of every gathered unit go to their
    /// pieces.
    pub fn collect_grads(&self) -> Result<()> {
        for u in 0..self.units.len() {
            self.reduce(u)?;
        }
        Ok(())
    }

    /// Before a phase (after the loop froze or unfroze the part): `full` gathers the rest unit
    /// (embeddings and heads run outside the block hooks); `gradients` (re)binds gradients when
    /// the part is trained now.
    pub fn begin_phase(&self) -> Result<()> {
        for (u, unit) in self.units.iter().enumerate() {
            let rebind = self.mode == ShardMode::Gradients
                && self.training(u)
                && self.gathered.borrow()[u]
                    .as_ref()
                    .is_some_and(|g| g.grads.is_none());
            if rebind {
                self.free(u);
            }
            if unit.prefix.is_none() || self.mode == ShardMode::Gradients {
                self.gather(u)?;
            }
        }
        Ok(())
    }

    /// After a phase: `full` frees every unit (their gradients were collected).
    pub fn end_phase(&self) {
        if self.mode == ShardMode::Full {
            for u in 0..self.units.len() {
                self.free(u);
            }
        }
    }

    /// After the optimizer updated the master pieces: `gradients` re-gathers the weights.
    pub fn after_step(&self) -> Result<()> {
        if self.mode == ShardMode::Gradients {
            for u in 0..self.units.len() {
                let fresh = {
                    let gathered = self.gathered.borrow();
                    let Some(g) = &gathered[u] else { continue };
                    let unit = &self.units[u];
                    let piece = self
                        .master
                        .narrow(0, unit.local, unit.piece)
                        .to_kind(self.compute_kind);
                    let all = self.collective.all_gather(&piece)?;
                    (g.weights.shallow_clone(), all.narrow(0, 0, unit.numel))
                };
                tch::no_grad(|| fresh.0.shallow_clone().copy_(&fresh.1));
            }
        }
        Ok(())
    }
}

impl BlockWeights for ShardedParams {
    fn unit_of(&self, tag: &BlockTag) -> Option<usize> {
        let unit = *self.by_prefix.get(&tag.prefix)?;
        let ours = self.vars.get(&tag.probe_name)?;
        (ours.data_ptr() == tag.probe.data_ptr()).then_some(unit)
    }

    fn acquire(&self, unit: usize) -> std::result::Result<(), String> {
        self.gather(unit)
            .and_then(|()| self.prefetch_after(unit))
            .map_err(|e| collective_error("all-gather", e))
    }

    fn release(&self, unit: usize, how: BlockUse) -> std::result::Result<(), String> {
        if self.mode != ShardMode::Full {
            return Ok(());
        }
        let keep = {
            let mut gathered = self.gathered.borrow_mut();
            let Some(g) = gathered[unit].as_mut() else {
                return Ok(());
            };
            match how {
                BlockUse::Forward { graph: true } => {
                    g.in_graph = true;
                    true
                }
                BlockUse::Forward { graph: false } => g.in_graph,
                BlockUse::Backward => false,
            }
        };
        if keep {
            return Ok(());
        }
        if how == BlockUse::Backward {
            self.reduce(unit)
                .map_err(|e| collective_error("reduce-scatter", e))?;
        }
        self.free(unit);
        Ok(())
    }
}
