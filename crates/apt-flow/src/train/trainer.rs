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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::{nn, Tensor};

use super::checkpoint::{self, TrainState};
use super::collective::{
    all_reduce_mean_grads, all_reduce_mean_scalars, broadcast_from_owners, broadcast_tensors,
    broadcast_weights, partition_variables, Collective, SingleProcess,
};
use super::metrics::{MetricLine, MetricsLog, StepLog};
use super::{clip_grad_norm, zero_grad, Ema, NonFiniteGuard, Optimizer, OptimizerConfig};
use crate::data::Cursor;
use crate::error::{FlowError, Result};
use crate::rng::TensorRng;
use crate::train::TrainConfig;

/// The loop's checkpoint directory, under [`Trainer::dir`].
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// One trained network: its weights, optimizer and optional EMA.
#[derive(Debug)]
pub struct Part {
    /// Checkpoint prefix and metric suffix (`model`, `generator`, `discriminator`).
    pub name: String,
    /// The weights (models built on it share its tensors).
    pub vs: nn::VarStore,
    /// Its optimizer.
    pub optimizer: Optimizer,
    /// EMA of its weights.
    pub ema: Option<Ema>,
}

impl Part {
    /// A part named `name` training `vs` with `optimizer`, with an EMA when `ema_decay` is set.
    pub fn new(
        name: &str,
        vs: nn::VarStore,
        optimizer: OptimizerConfig,
        ema_decay: Option<f64>,
    ) -> Result<Self> {
        if name.is_empty() || name == "ema" || name == "optimizer" || name.contains('.') {
            return Err(FlowError::Config {
                key: "part".into(),
                reason: format!("{name:?} cannot name a trained part"),
            });
        }
        Ok(Self {
            name: name.into(),
            ema: ema_decay.map(|d| Ema::new(&vs, d)),
            optimizer: Optimizer::new(optimizer)?,
            vs,
        })
    }

    /// Copies the weights to export — the EMA's when there is one, else the raw weights —
    /// into `target` (a store of the same model).
    pub fn copy_exported_to(&self, target: &nn::VarStore) -> Result<()> {
        match &self.ema {
            Some(ema) => ema.copy_to(target),
            None => {
                copy_weights(&self.vs, target);
                Ok(())
            }
        }
    }
}

/// 64-bit FNV-1a of `bytes` (a fingerprint the ranks compare).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Copies every variable of `from` into the same-named variable of `to`.
pub fn copy_weights(from: &nn::VarStore, to: &nn::VarStore) {
    tch::no_grad(|| {
        let src = from.variables();
        for (k, mut v) in to.variables() {
            v.copy_(&src[&k]);
        }
    });
}

/// What a stage optimises: the loss of one micro-batch of each phase, and its data position.
pub trait TrainStep {
    /// The parts one update trains, in order, as indices into the trainer's parts (one phase
    /// each). Default: part 0, once.
    fn phases(&self) -> Vec<usize> {
        vec![0]
    }

    /// Called once before the first update (after a resume has restored every part), e.g. to
    /// initialise a target network from the EMA.
    fn prepare(&mut self, _parts: &[Part]) -> Result<()> {
        Ok(())
    }

    /// The loss of the next micro-batch of phase `phase` (all randomness from `rng`). The loop
    /// back-propagates it; values added to `log` are written as their means over the
    /// micro-batches.
    fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor>;

    /// Computes the next micro-batch's loss and back-propagates `loss / accum` into the
    /// trained part; returns the loss value. By default [`loss`](Self::loss), then `backward`;
    /// a step that recomputes activations drives its own backward pass here.
    fn backward(
        &mut self,
        phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<f64> {
        let loss = self.loss(phase, rng, log)?;
        Ok(backward_scaled(&loss, accum))
    }

    /// Called after an update of phase `phase` was applied (not when the guard skipped it).
    fn after_update(&mut self, _phase: usize, _parts: &[Part]) -> Result<()> {
        Ok(())
    }

    /// The data position to save.
    fn cursor(&self) -> Cursor;

    /// Continues the data stream from a saved position.
    fn restore(&mut self, cursor: Cursor) -> Result<()>;
}

/// Back-propagates `loss / accum` and returns the loss value (the loop's default backward).
pub fn backward_scaled(loss: &Tensor, accum: usize) -> f64 {
    (loss / accum as f64).backward();
    loss.double_value(&[])
}

/// Who watches a run: every metric line, and previews.
pub trait Observer {
    /// After every update.
    fn update(&mut self, line: &MetricLine);

    /// Every `preview_every` updates and after the last one. Does nothing by default.
    fn preview(&mut self, _step: u64, _parts: &[Part]) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&MetricLine)> Observer for F {
    fn update(&mut self, line: &MetricLine) {
        self(line)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// All steps done.
    Completed,
    /// The stop flag was raised; a checkpoint was written after the current update.
    Stopped,
}

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
    owners: Vec<Option<Vec<BTreeSet<String>>>>,
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

    /// Checks that every rank runs the same stage, config, models and step (an error naming
    /// what differs), then makes every part's weights and EMA equal to rank 0's.
    fn synchronise(&mut self) -> Result<()> {
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
                         with the same config and run directory",
                        what[i],
                        c.rank(),
                        self.stage
                    )));
                }
            }
        }
        for part in &mut self.parts {
            broadcast_weights(c, &part.vs, 0)?;
            if let Some(ema) = &part.ema {
                let mut shadow: Vec<Tensor> =
                    ema.state_tensors("").into_iter().map(|(_, t)| t).collect();
                broadcast_tensors(c, &mut shadow, 0)?;
            }
        }
        let shard = self.config.shard_optimizer && c.world_size() > 1;
        self.owners = self
            .parts
            .iter_mut()
            .map(|part| {
                shard.then(|| {
                    let owners = partition_variables(&part.vs, c.world_size());
                    part.optimizer.set_owned(Some(owners[c.rank()].clone()));
                    owners
                })
            })
            .collect();
        Ok(())
    }

    /// ZeRO-1, before a checkpoint: every rank receives the optimizer state of the variables
    /// it does not own from their owners (dropped again by [`Self::drop_gathered_state`]).
    fn gather_optimizer_state(&mut self) -> Result<()> {
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
    fn drop_gathered_state(&mut self) {
        for part in &mut self.parts {
            part.optimizer.drop_unowned();
        }
    }

    /// Whether any rank's stop flag is raised (every rank gets the same answer).
    fn stopping(&self) -> Result<bool> {
        let mut raised = [f64::from(u8::from(self.stop.load(Ordering::SeqCst)))];
        all_reduce_mean_scalars(&*self.collective, &mut raised)?;
        Ok(raised[0] > 0.0)
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
