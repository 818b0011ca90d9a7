//! The training loop's side of a data-parallel run: checking that every rank runs the same
//! thing, starting from rank 0's weights, ZeRO-1's split of the optimizer state (and gathering
//! it for a checkpoint), and agreeing on the stop flag. See [`super::collective`] for the
//! operations and [`Trainer::with_collective`] for how a run opts in.

use std::sync::atomic::Ordering;

use tch::Tensor;

use super::collective::{
    all_reduce_mean_scalars, broadcast_flat, broadcast_tensors, broadcast_weights,
    partition_variables,
};
use super::precision::Precision;
use super::shard::ShardMode;
use super::trainer::Trainer;
use crate::error::{FlowError, Result};

/// 64-bit FNV-1a of `bytes` (a fingerprint the ranks compare).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Trainer {
    /// Checks that every rank runs the same stage, config, models and step (an error naming
    /// what differs), then makes every part's weights and EMA equal to rank 0's.
    pub(super) fn synchronise(&mut self) -> Result<()> {
        let c = &*self.collective;
        if c.world_size() > 1 {
            let config = serde_json::to_string(&self.config).expect("configs serialise");
            let mut models = String::new();
            for part in &self.parts {
                let mut vars: Vec<(String, Vec<i64>)> = part
                    .vs
                    .variables()
                    .into_iter()
                    .map(|(k, t)| (k, t.size()))
                    .collect();
                vars.sort();
                models += &format!("{}:{vars:?};", part.name);
            }
            let mine = [
                fnv64(format!("{}/{config}", self.stage).as_bytes()) as i64,
                fnv64(models.as_bytes()) as i64,
                self.step as i64,
            ];
            let all = Vec::<i64>::try_from(c.all_gather(&Tensor::from_slice(&mine))?)?;
            for (rank, theirs) in all.chunks(3).enumerate() {
                let what = ["stage or training config", "models", "resumed step"];
                if let Some(i) = (0..3).find(|&i| theirs[i] != mine[i]) {
                    return Err(FlowError::Collective(format!(
                        "rank {rank}'s {} differs from rank {}'s in stage {}: start every rank \
                         with the same training config, models and checkpoint directory",
                        what[i],
                        c.rank(),
                        self.stage
                    )));
                }
            }
        }
        for part in &mut self.parts {
            broadcast_weights(c, &part.vs, 0)?;
            if part.precision() != Precision::Fp32 {
                broadcast_flat(c, part.flat.master(), 0)?;
                part.flat.sync_compute();
            }
            if let Some(ema) = &part.ema {
                let mut shadow: Vec<Tensor> =
                    ema.state_tensors("").into_iter().map(|(_, t)| t).collect();
                broadcast_tensors(c, &mut shadow, 0)?;
            }
        }
        let shard = self.config.shard_mode() == ShardMode::Optimizer && c.world_size() > 1;
        self.owners = self
            .parts
            .iter_mut()
            .map(|part| {
                shard.then(|| {
                    let owners = partition_variables(&part.vs, c.world_size());
                    // Each rank's share contiguous in the flat buffers, in rank order.
                    let order: Vec<String> = owners.iter().flatten().cloned().collect();
                    part.relayout(&order);
                    part.optimizer.set_owned(Some(owners[c.rank()].clone()));
                    owners
                })
            })
            .collect();
        Ok(())
    }

    /// `shard = gradients | full`: splits every part over the ranks (after
    /// [`Self::synchronise`] and the step's `prepare`, and again after a checkpoint or a
    /// preview).
    pub(super) fn shard_parts(&mut self) -> Result<()> {
        let mode = self.config.shard_mode();
        for part in &mut self.parts {
            part.shard(&self.collective, mode)?;
        }
        Ok(())
    }

    /// Makes every sharded part whole again on every rank (before a checkpoint, a preview and
    /// the loop's return).
    pub(super) fn unshard_parts(&mut self) -> Result<()> {
        for part in &mut self.parts {
            part.unshard()?;
        }
        Ok(())
    }

    /// ZeRO-1, before a checkpoint: every rank receives the optimizer state of the variables
    /// it does not own from their owners (dropped again by [`Self::drop_gathered_state`]).
    pub(super) fn gather_optimizer_state(&mut self) -> Result<()> {
        let c = &*self.collective;
        for (part, owners) in self.parts.iter_mut().zip(&self.owners) {
            let Some(owners) = owners else { continue };
            let vars = part.vs.variables();
            for slot in part.optimizer.slot_names() {
                for (root, names) in owners.iter().enumerate() {
                    let mut tensors: Vec<Tensor> = names
                        .iter()
                        .map(|n| {
                            if root == c.rank() {
                                part.optimizer.slot_or_zeros(slot, n, &vars[n])
                            } else {
                                vars[n].detach().zeros_like()
                            }
                        })
                        .collect();
                    broadcast_tensors(c, &mut tensors, root)?;
                    if root != c.rank() {
                        for (n, t) in names.iter().zip(tensors) {
                            part.optimizer.insert_slot(slot, n, t);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// ZeRO-1, after a checkpoint: back to this rank's share of the optimizer state.
    pub(super) fn drop_gathered_state(&mut self) {
        for part in &mut self.parts {
            part.optimizer.drop_unowned();
        }
    }

    /// Whether any rank's stop flag is raised (every rank gets the same answer).
    pub(super) fn stopping(&self) -> Result<bool> {
        let mut raised = [f64::from(u8::from(self.stop.load(Ordering::SeqCst)))];
        all_reduce_mean_scalars(&*self.collective, &mut raised)?;
        Ok(raised[0] > 0.0)
    }
}
