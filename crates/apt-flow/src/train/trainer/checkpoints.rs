//! The trainer's checkpoints: writing every part's weights, optimizer state and EMA with the
//! RNG, data cursor and guard ([`super::checkpoint`]'s format), and resuming from the newest
//! intact one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::Tensor;

use super::{Trainer, CHECKPOINT_DIR};
use crate::error::{FlowError, Result};
use crate::train::checkpoint::{self, TrainState};
use crate::train::checkpoint_shards::{
    shard_file_name, write_shard, PartLayout, ShardFile, ShardRecord,
};
use crate::train::step::TrainStep;
use crate::train::NonFiniteGuard;

impl Trainer {
    /// The checkpoint directory.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// Restores everything from the newest intact checkpoint; `Ok(false)` when there is none.
    /// Newer checkpoints that were rejected are logged. A checkpoint of another stage, or whose
    /// optimizer kind differs from the configured one, is an error.
    pub fn resume(&mut self, step: &mut impl TrainStep) -> Result<bool> {
        let Some((loaded, rejected)) = checkpoint::load_latest(&self.checkpoint_dir())? else {
            return Ok(false);
        };
        for why in rejected {
            tracing::warn!("skipping a damaged checkpoint: {why}");
        }
        let m = &loaded.manifest;
        let bad = |reason: String| FlowError::File {
            path: loaded.path.clone(),
            reason,
        };
        if m.stage != self.stage {
            return Err(bad(format!(
                "written by stage {:?}, not {:?}",
                m.stage, self.stage
            )));
        }
        for part in &mut self.parts {
            part.load_weights(&loaded.part(&part.name), &loaded.path)?;
            if let Some(ema) = &mut part.ema {
                ema.load_state(&loaded.tensors, &format!("ema.{}", part.name))?;
            }
            let prefix = format!("optimizer.{}", part.name);
            let Some((saved, _)) = m.optimizers.get(&prefix) else {
                return Err(bad(format!("holds no optimizer state for `{}`", part.name)));
            };
            let wanted = part.optimizer.config();
            if saved.kind() != wanted.kind() {
                return Err(bad(format!(
                    "`{}` was trained with {}, the config now says {}: resume with the run's \
                     optimizer or start a new run",
                    part.name,
                    saved.kind(),
                    wanted.kind()
                )));
            }
            loaded.restore_optimizer(&prefix, &mut part.optimizer, &part.vs)?;
        }
        if let Some(rng) = &m.rng {
            self.rng = rng.clone();
        }
        if let Some(cursor) = m.cursor {
            step.restore(cursor)?;
        }
        self.guard = NonFiniteGuard {
            max_consecutive: self.config.max_nonfinite,
            ..m.guard.clone()
        };
        self.step = m.step;
        tracing::info!(stage = %self.stage, step = self.step, checkpoint = %loaded.path.display(), "resumed");
        Ok(true)
    }

    /// Writes a checkpoint of the current state (every rank holds the same state; the caller
    /// decides which one writes — the loop lets rank 0).
    pub fn checkpoint(&self, step: &impl TrainStep) -> Result<PathBuf> {
        let models = self
            .parts
            .iter()
            .map(|p| (p.name.clone(), p.weights()))
            .collect();
        let state = self.state(step, models);
        checkpoint::save(&self.checkpoint_dir(), &state, self.config.keep_checkpoints)
    }

    /// What a checkpoint of the current state holds, with `models` as the weights.
    fn state(
        &self,
        step: &impl TrainStep,
        models: Vec<(String, Vec<(String, Tensor)>)>,
    ) -> TrainState<'_> {
        TrainState {
            stage: &self.stage,
            step: self.step,
            models,
            emas: self
                .parts
                .iter()
                .filter_map(|p| Some((format!("ema.{}", p.name), p.ema.as_ref()?)))
                .collect(),
            optimizers: self
                .parts
                .iter()
                .map(|p| (format!("optimizer.{}", p.name), &p.optimizer))
                .collect(),
            rng: Some(&self.rng),
            cursor: Some(step.cursor()),
            guard: &self.guard,
            extra: serde_json::Value::Null,
        }
    }

    /// Every rank writes its pieces of the sharded parts; rank 0 writes the rest and the
    /// manifest naming every shard file (see [`crate::train::checkpoint_shards`]). A
    /// collective: every rank calls it.
    pub(super) fn checkpoint_sharded(&self, step: &impl TrainStep) -> Result<()> {
        let c = &*self.collective;
        let dir = self.checkpoint_dir();
        let name = checkpoint::step_name(self.step);
        let mut tensors = Vec::new();
        let mut layouts = BTreeMap::new();
        for part in &self.parts {
            let Some(pieces) = part.pieces() else {
                continue;
            };
            tensors.push((
                format!("{}.master", part.name),
                pieces.master().shallow_clone(),
            ));
            let ema = part.ema.as_ref().and_then(|e| e.pieces());
            if let Some(e) = ema {
                tensors.push((format!("ema.{}", part.name), e.shallow_clone()));
            }
            let slots = part.optimizer.piece_slots();
            for (slot, t) in &slots {
                tensors.push((format!("optimizer.{}.{slot}", part.name), t.shallow_clone()));
            }
            layouts.insert(
                part.name.clone(),
                PartLayout {
                    units: pieces.layout(),
                    ema: ema.is_some(),
                    slots: slots.into_iter().map(|(s, _)| s).collect(),
                },
            );
        }
        let mine = write_shard(&dir, &name, c.rank(), c.world_size(), &tensors)?;
        let hash = u64::from_str_radix(&mine.fnv64, 16).expect("hex") as i64;
        let all = c.all_gather(&Tensor::from_slice(&[mine.bytes as i64, hash]))?;
        let all = Vec::<i64>::try_from(&all)?;
        if c.is_main() {
            let files = all
                .chunks(2)
                .enumerate()
                .map(|(rank, v)| ShardFile {
                    name: shard_file_name(&name, rank, c.world_size()),
                    bytes: v[0] as u64,
                    fnv64: format!("{:016x}", v[1] as u64),
                })
                .collect();
            let record = ShardRecord {
                world: c.world_size(),
                files,
                parts: layouts,
            };
            let models = self
                .parts
                .iter()
                .map(|p| (p.name.clone(), p.unsharded_weights()))
                .collect();
            let state = self.state(step, models);
            checkpoint::save_with_shards(&dir, &state, self.config.keep_checkpoints, Some(record))?;
        }
        c.barrier()
    }
}
