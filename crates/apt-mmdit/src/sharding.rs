//! Hooks that let a fully sharded data-parallel run (ZeRO-3, FSDP's `FULL_SHARD`) fetch a
//! block's weights just before the block runs and free them right after.
//!
//! A training loop that keeps only its rank's slice of the weights registers a
//! [`BlockWeights`] for the variable store it trains ([`register`]); the models' block loops
//! (the plain forward and both halves of the recomputed backward, MMDiT and Wan) call
//! [`before_block`] and [`after_block`] around every block. With nothing registered (every run
//! that does not shard its weights) the calls return at once.
//!
//! A block is identified by a [`BlockTag`]: its variables' name prefix and one of its
//! variables. The hooks compare that variable with their own store's variable of the same name
//! (the same tensor, not merely the same name), so a teacher with the same layout as the
//! trained model never triggers the trained model's hooks.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use tch::{nn, Tensor};

use crate::error::{MmditError, Result};

/// One block of a model, as the hooks see it.
#[derive(Debug)]
pub struct BlockTag {
    /// The block's variables' name prefix, e.g. `backbone.transformer_blocks.3` (no final dot).
    pub prefix: String,
    /// The full name of one of the block's variables.
    pub probe_name: String,
    /// That variable (a handle sharing its tensor).
    pub probe: Tensor,
}

impl BlockTag {
    /// The tag of the block built under `block` whose variable `probe` (a name relative to
    /// `block`, e.g. `norm1.linear.weight`) exists.
    ///
    /// # Panics
    /// When the block has no such variable (a model's own naming is wrong).
    pub fn new(block: &nn::Path, probe: &str) -> Self {
        let mut parts: Vec<&str> = probe.split('.').collect();
        let leaf = parts.pop().expect("a variable name");
        let owner = parts.iter().fold(block.clone(), |p, s| p.sub(*s));
        let tensor = owner
            .get(leaf)
            .unwrap_or_else(|| panic!("block {} has no variable {probe}", block.path("")));
        let prefix = block.components().collect::<Vec<_>>().join(".");
        Self {
            probe_name: format!("{prefix}.{probe}"),
            prefix,
            probe: tensor,
        }
    }
}

/// How a block was used, for [`BlockWeights::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockUse {
    /// A forward; `graph` when its output is part of an autograd graph, which then still needs
    /// the weights (they stay until the loop releases them after the backward pass).
    Forward {
        /// The output requires grad.
        graph: bool,
    },
    /// The recomputed forward and the backward through it are done: the block's gradients are
    /// complete for this pass.
    Backward,
}

/// What a sharded training loop does around a block of a model it trains.
pub trait BlockWeights {
    /// The unit of this store that `tag` is (`None`: another store's block).
    fn unit_of(&self, tag: &BlockTag) -> Option<usize>;
    /// Makes the unit's weights whole (and gives them zeroed gradients) before it runs.
    fn acquire(&self, unit: usize) -> std::result::Result<(), String>;
    /// After the unit ran: frees its weights when nothing needs them any more, first handing
    /// its gradients on after [`BlockUse::Backward`].
    fn release(&self, unit: usize, how: BlockUse) -> std::result::Result<(), String>;
}

thread_local! {
    static REGISTERED: RefCell<Vec<Weak<dyn BlockWeights>>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `hooks` registered while it lives (see [`register`]).
#[must_use = "the hooks are unregistered when this is dropped"]
pub struct Registration {
    hooks: Weak<dyn BlockWeights>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registration")
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        REGISTERED.with(|r| {
            r.borrow_mut()
                .retain(|h| h.strong_count() > 0 && !Weak::ptr_eq(h, &self.hooks))
        });
    }
}

/// Registers `hooks` on this thread until the returned guard is dropped.
pub fn register(hooks: &Rc<dyn BlockWeights>) -> Registration {
    let weak = Rc::downgrade(hooks);
    REGISTERED.with(|r| r.borrow_mut().push(weak.clone()));
    Registration { hooks: weak }
}

/// The hooks that claim `tag`, and the unit.
fn claimant(tag: &BlockTag) -> Option<(Rc<dyn BlockWeights>, usize)> {
    REGISTERED.with(|r| {
        let r = r.borrow();
        if r.is_empty() {
            return None;
        }
        r.iter().filter_map(Weak::upgrade).find_map(|h| {
            let unit = h.unit_of(tag)?;
            Some((h, unit))
        })
    })
}

fn sharding_error(tag: &BlockTag, what: &str, why: String) -> MmditError {
    MmditError::Sharding {
        block: tag.prefix.clone(),
        message: format!("{what}: {why}"),
    }
}

/// Before a model runs the block `tag`.
pub fn before_block(tag: &BlockTag) -> Result<()> {
    match claimant(tag) {
        Some((h, unit)) => h
            .acquire(unit)
            .map_err(|e| sharding_error(tag, "gathering its weights", e)),
        None => Ok(()),
    }
}

/// After a model ran the block `tag` (see [`BlockUse`]).
pub fn after_block(tag: &BlockTag, how: BlockUse) -> Result<()> {
    match claimant(tag) {
        Some((h, unit)) => h
            .release(unit, how)
            .map_err(|e| sharding_error(tag, "releasing its weights", e)),
        None => Ok(()),
    }
}
