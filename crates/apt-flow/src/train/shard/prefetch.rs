//! `full`: the next block's weights are gathered while the current block computes (PyTorch
//! FSDP's forward and backward prefetch). The hooks see the blocks in order — upwards in a
//! forward, downwards in the recomputed backward — so after gathering block `b` the part
//! starts the gather of `b + 1` (or `b − 1`) without waiting for it; the block's own gather
//! later only waits. At most two blocks are whole at a time. Backends that cannot overlap (MPI)
//! gather at once, which changes nothing but the timing.

use tch::Tensor;

use super::params::block_index;
use super::{ShardMode, ShardedParams};
use crate::error::Result;

impl ShardedParams {
    /// Unit `u`'s piece of the master weights in the compute precision.
    pub(super) fn compute_piece(&self, u: usize) -> Tensor {
        let unit = &self.units[u];
        self.master
            .narrow(0, unit.local, unit.piece)
            .to_kind(self.compute_kind)
    }

    /// Counts `n` more elements whole (the peak in [`super::ShardStats`]).
    pub(super) fn count_whole(&self, n: i64) {
        let (stats, now) = &mut *self.stats.borrow_mut();
        *now += n;
        stats.peak_gathered = stats.peak_gathered.max(*now);
    }

    /// After the hooks gathered unit `u`: starts the gather of the block the model runs next.
    pub(super) fn prefetch_after(&self, u: usize) -> Result<()> {
        if self.mode != ShardMode::Full {
            return Ok(());
        }
        let Some(block) = self.units[u].prefix.as_deref().and_then(block_index) else {
            return Ok(());
        };
        // The same or a higher block than the last one: walking down (the recomputed
        // backward, which starts where the forward ended).
        let down = self.last_block.get().is_some_and(|last| last >= block);
        self.last_block.set(Some(block));
        let next = match down {
            true => block.checked_sub(1),
            false => Some(block + 1),
        };
        match next.and_then(|b| self.unit_of_block.get(&b)) {
            Some(&n) => self.prefetch(n),
            None => Ok(()),
        }
    }

    /// Starts gathering unit `u` unless it is whole or on its way.
    fn prefetch(&self, u: usize) -> Result<()> {
        if self.gathered.borrow()[u].is_some() || self.pending.borrow()[u].is_some() {
            return Ok(());
        }
        let started = self.collective.all_gather_start(&self.compute_piece(u))?;
        self.count_whole(self.units[u].numel);
        self.pending.borrow_mut()[u] = Some(started);
        Ok(())
    }
}
