//! The one training loop every stage uses (pre-training, both distillations, and adversarial
//! post-training): N named [`Part`]s (weights + optimizer + optional EMA) trained by a
//! [`TrainStep`] that computes the loss of one micro-batch. The loop owns everything else:
//! gradient accumulation, the non-finite guard, clipping, the learning-rate schedule, EMA
//! updates, `metrics.jsonl`, previews, periodic atomic checkpoints of every part, optimizer,
//! EMA, the RNG and the data cursor, exact resume, and a stop flag (finish the update,
//! checkpoint, return).
//!
//! One update runs the step's phases in order; each phase trains one part (the others are
//! frozen, so no gradient reaches them): a flow stage has one phase, APT two (D, then G).
//!
//! Data parallel: with a [`Collective`] of N ranks (see [`Trainer::with_collective`]) the loop
//! starts from rank 0's weights and EMA, averages every phase's gradients, loss and logged
//! values over ranks before the guard, clipping and the optimizer (so every rank applies the
//! same update), agrees on the stop flag, and only rank 0 writes metrics, previews and
//! checkpoints. The step trains on its [`Shard`](super::Shard) of each global batch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint::{self, TrainState};
use super::collective::{
    all_reduce_mean_grads, all_reduce_mean_scalars, broadcast_from_owners, Collective,
    SingleProcess,
};
use super::metrics::{MetricLine, MetricsLog, StepLog};
use super::part::Part;
use super::step::{Finish, Observer, TrainStep};
use super::{clip_grad_norm, zero_grad, NonFiniteGuard};
use crate::error::{FlowError, Result};
use crate::rng::TensorRng;
use crate::train::TrainConfig;

/// The loop's checkpoint directory, under [`Trainer::dir`].
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// The loop's state.
pub struct Trainer {
    /// The run's label (e.g. the method stage: `pretrain`, `apt`): written into checkpoints and
    /// metric lines; [`resume`](Self::resume) refuses a checkpoint with another label.
    pub stage: String,
    /// Where `checkpoints/` and `metrics.jsonl` go.
    pub dir: PathBuf,
    /// Knobs.
    pub config: TrainConfig,
    /// The trained networks.
    pub parts: Vec<Part>,
    /// The run's random stream.
    pub rng: TensorRng,
    /// Non-finite counters (shared by every phase).
    pub guard: NonFiniteGuard,
    /// Completed updates.
    pub step: u64,
    /// Raised (e.g. by Ctrl-C) to finish the current update, checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// The ranks of a data-parallel run ([`SingleProcess`] by default).
    pub collective: Rc<dyn Collective>,
    /// ZeRO-1: per part, which variables each rank owns (set at the start when
    /// `config.shard_optimizer` and more than one rank).
    pub(super) owners: Vec<Option<Vec<BTreeSet<String>>>>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Trainer {{ stage: {}, step: {}/{} }}",
            self.stage, self.step, self.config.steps
        )
    }
}

impl Trainer {
    /// A fresh trainer for `parts`, drawing from `rng`.
    pub fn new(
        stage: &str,
        dir: &Path,
        config: &TrainConfig,
        parts: Vec<Part>,
        rng: TensorRng,
    ) -> Result<Self> {
        config.validate(&format!("{stage}.train"))?;
        Ok(Self {
            stage: stage.into(),
            dir: dir.to_path_buf(),
            guard: NonFiniteGuard::new(config.max_nonfinite),
            config: config.clone(),
            parts,
            rng,
            step: 0,
            stop: Arc::new(AtomicBool::new(false)),
            collective: Rc::new(SingleProcess),
            owners: Vec::new(),
        })
    }

    /// Trains data-parallel over `collective`'s ranks (see the module docs).
    pub fn with_collective(mut self, collective: Rc<dyn Collective>) -> Self {
        self.collective = collective;
        self
    }

    /// The part called `name`.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

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
            loaded.restore_weights(&part.name, &part.vs)?;
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
            models: self.parts.iter().map(|p| (p.name.clone(), &p.vs)).collect(),
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

    /// Runs updates until `config.steps` (or the stop flag), reporting to `observer`.
    pub fn run(
        &mut self,
        step: &mut impl TrainStep,
        observer: &mut impl Observer,
    ) -> Result<Finish> {
        let main = self.collective.is_main();
        let mut metrics = if main {
            Some(MetricsLog::open(&self.dir)?)
        } else {
            None
        };
        let start = Instant::now();
        let phases = step.phases();
        self.synchronise()?;
        step.prepare(&self.parts)?;
        while self.step < self.config.steps {
            let next = self.step + 1;
            let mut values = BTreeMap::new();
            for (phase, &part) in phases.iter().enumerate() {
                self.update(step, phase, part, next, &mut values)?;
            }
            self.step = next;
            let line = MetricLine {
                stage: self.stage.clone(),
                step: next,
                values: values
                    .into_iter()
                    .map(|(k, v)| (k, Some(v).filter(|v: &f64| v.is_finite())))
                    .collect(),
                skipped: self.guard.skipped_total,
                seconds: start.elapsed().as_secs_f64(),
            };
            let last = next == self.config.steps;
            let stopping = self.stopping()?;
            let checkpoint = next.is_multiple_of(self.config.checkpoint_every) || last || stopping;
            if checkpoint {
                self.gather_optimizer_state()?;
            }
            if let Some(metrics) = &mut metrics {
                metrics.write(&line)?;
                observer.update(&line);
                let every = self.config.preview_every;
                if every > 0 && (next.is_multiple_of(every) || last) {
                    observer.preview(next, &self.parts)?;
                }
                if checkpoint {
                    self.checkpoint(step)?;
                }
            }
            if checkpoint {
                self.drop_gathered_state();
            }
            if stopping && !last {
                return Ok(Finish::Stopped);
            }
        }
        Ok(Finish::Completed)
    }

    /// Freezes (or unfreezes) every part but `index`, so that no gradient reaches them.
    fn freeze_others(&mut self, index: usize, freeze: bool) {
        for (i, p) in self.parts.iter_mut().enumerate() {
            match (i == index, freeze) {
                (true, _) => {}
                (false, true) => p.vs.freeze(),
                (false, false) => p.vs.unfreeze(),
            }
        }
    }

    /// One phase of update `next`: accumulate the micro-batch gradients of part `index`
    /// (the others frozen), check them, clip, step the optimizer at the scheduled rate, update
    /// the EMA.
    fn update(
        &mut self,
        step: &mut impl TrainStep,
        phase: usize,
        index: usize,
        next: u64,
        values: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let accum = self.config.grad_accum;
        zero_grad(&self.parts[index].vs);
        self.freeze_others(index, true);
        let mut log = StepLog::default();
        let mut total = 0.0;
        let mut accumulate = || -> Result<()> {
            for _ in 0..accum {
                total += step.backward(phase, &mut self.rng, &mut log, accum)?;
            }
            Ok(())
        };
        let result = accumulate();
        self.freeze_others(index, false);
        result?;
        // Data parallel: every rank continues with the means over ranks.
        let c = &*self.collective;
        all_reduce_mean_grads(c, &self.parts[index].vs)?;
        let mut logged: Vec<(String, f64)> = log.means(accum).collect();
        let mut scalars: Vec<f64> = logged.iter().map(|(_, v)| *v).collect();
        scalars.push(total / accum as f64);
        all_reduce_mean_scalars(c, &mut scalars)?;
        let loss = scalars.pop().expect("the loss was pushed");
        for ((_, v), mean) in logged.iter_mut().zip(scalars) {
            *v = mean;
        }
        let part = &mut self.parts[index];
        let lr = (self.config.schedule).lr(part.optimizer.config().lr(), next, self.config.steps);
        let mut grad_norm = f64::NAN;
        if self.guard.check(loss, &part.vs, next)? {
            grad_norm = clip_grad_norm(&part.vs, self.config.clip_grad.unwrap_or(f64::INFINITY));
            part.optimizer.step(&part.vs, lr);
            if let Some(Some(owners)) = self.owners.get(index) {
                broadcast_from_owners(&*self.collective, &part.vs, owners)?;
            }
            if let Some(ema) = &mut part.ema {
                ema.update(&part.vs);
            }
            step.after_update(phase, &self.parts)?;
        }
        zero_grad(&self.parts[index].vs);
        values.extend(logged);
        let suffix = if self.parts.len() == 1 {
            String::new()
        } else {
            format!("_{}", self.parts[index].name)
        };
        values.insert(format!("lr{suffix}"), lr);
        values.insert(format!("grad_norm{suffix}"), grad_norm);
        Ok(())
    }
}
