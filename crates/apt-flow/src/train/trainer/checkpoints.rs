//! The trainer's checkpoints: writing every part's weights, optimizer state and EMA with the
//! RNG, data cursor and guard ([`super::checkpoint`]'s format), and resuming from the newest
//! intact one.

use std::path::PathBuf;

use super::{Trainer, CHECKPOINT_DIR};
use crate::error::{FlowError, Result};
use crate::train::checkpoint::{self, TrainState};
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
        let state = TrainState {
            stage: &self.stage,
            step: self.step,
            models: self
                .parts
                .iter()
                .map(|p| (p.name.clone(), p.weights()))
                .collect(),
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
        };
        checkpoint::save(&self.checkpoint_dir(), &state, self.config.keep_checkpoints)
    }
}
