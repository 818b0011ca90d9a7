//! A [`Part`] split into this rank's pieces and made whole again: the weights, the optimizer
//! state and the EMA move together, so that everything outside the training loop (resuming,
//! checkpoints, previews, exports) sees an ordinary part.

use std::collections::BTreeMap;
use std::rc::Rc;

use apt_mmdit::sharding::{self, BlockWeights, Registration};
use tch::Tensor;

use super::{ShardMode, ShardStats, ShardedParams};
use crate::error::Result;
use crate::train::collective::Collective;
use crate::train::flat::FlatParams;
use crate::train::part::Part;

/// A sharded part's pieces and its registration with the models' block hooks.
#[derive(Debug)]
pub(crate) struct Sharded {
    params: Rc<ShardedParams>,
    _hooks: Registration,
}

impl Part {
    /// Splits the part over `collective`'s ranks (`mode`: `gradients` or `full`); every rank
    /// must hold the same weights, optimizer state and EMA (a collective). Does nothing for one
    /// rank, another mode, or a part already split.
    pub fn shard(&mut self, collective: &Rc<dyn Collective>, mode: ShardMode) -> Result<()> {
        if !mode.splits_weights() || collective.world_size() == 1 || self.sharded.is_some() {
            return Ok(());
        }
        let params = Rc::new(ShardedParams::new(
            &self.vs,
            &self.flat,
            collective.clone(),
            mode,
        ));
        self.optimizer.keep_pieces(|named| params.pieces_of(named));
        if let Some(ema) = &mut self.ema {
            ema.keep_pieces(|named| params.pieces_of(named));
        }
        self.flat = FlatParams::unbound(self.flat.precision(), self.vs.device());
        params.start()?;
        let hooks: Rc<dyn BlockWeights> = params.clone();
        self.sharded = Some(Sharded {
            _hooks: sharding::register(&hooks),
            params,
        });
        Ok(())
    }

    /// Makes a sharded part whole again on every rank (a collective); nothing to do otherwise.
    pub fn unshard(&mut self) -> Result<()> {
        let Some(Sharded { params, _hooks }) = self.sharded.take() else {
            return Ok(());
        };
        drop(_hooks);
        let master: BTreeMap<String, Tensor> = params.gather_named(params.master())?;
        self.optimizer
            .gather_pieces(|local| params.gather_named(local))?;
        if let Some(ema) = &mut self.ema {
            ema.gather_pieces(|local| params.gather_named(local))?;
        }
        params.restore_whole(&master);
        self.shard_stats = self.shard_stats.merge(params.stats());
        self.flat = FlatParams::new(&self.vs, self.flat.precision(), None, None);
        Ok(())
    }

    /// What this rank held of the part while it was sharded (zeros if it never was).
    pub fn shard_stats(&self) -> ShardStats {
        match &self.sharded {
            Some(s) => self.shard_stats.merge(s.params.stats()),
            None => self.shard_stats,
        }
    }

    /// This rank's pieces while the part is sharded.
    pub fn pieces(&self) -> Option<&ShardedParams> {
        self.sharded.as_ref().map(|s| &*s.params)
    }
}
