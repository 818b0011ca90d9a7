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

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::rng::TensorRng;
use crate::train::collective::{
    all_reduce_logged, all_reduce_mean_flat, broadcast_flat_from_owners, Collective, SingleProcess,
    BUCKET_ELEMENTS,
};
use crate::train::metrics::{Logged, MetricLine, MetricsLog, StepLog};
use crate::train::part::Part;
use crate::train::resident;
use crate::train::step::{Observer, RunEnd, TrainStep};
use crate::train::NonFiniteGuard;
use crate::train::TrainConfig;

mod checkpoints;

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
    /// ZeRO-1: per part, which variables each rank owns (set at the start when the config's
    /// `shard` is `optimizer` and there is more than one rank).
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
    /// A fresh trainer for `parts` that checkpoints into `dir`, drawing from `rng`; `stage`
    /// labels its checkpoints and metric lines (a checkpoint of another label is not resumed).
    /// `config` is checked first (errors name its fields, `train.steps`, …).
    pub fn new(
        stage: &str,
        dir: &Path,
        config: &TrainConfig,
        parts: Vec<Part>,
        rng: TensorRng,
    ) -> Result<Self> {
        config.validate("train")?;
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

    /// Runs updates until `config.steps` (or the stop flag), reporting to `observer`.
    pub fn run(
        &mut self,
        step: &mut impl TrainStep,
        observer: &mut impl Observer,
    ) -> Result<RunEnd> {
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
        self.shard_parts()?;
        resident::reset_peak();
        let mut pending: Vec<PendingLine> = Vec::new();
        while self.step < self.config.steps {
            pending.push(self.one_update(step, &phases, start)?);
            let next = self.step;
            let last = next == self.config.steps;
            let stopping = self.stopping()?;
            let checkpoint = next.is_multiple_of(self.config.checkpoint_every) || last || stopping;
            let every = self.config.preview_every;
            let preview = every > 0 && (next.is_multiple_of(every) || last);
            if checkpoint || preview || next.is_multiple_of(self.config.log_every) {
                // The host reads the device's scalars here, and only here.
                let lines = self.settle(std::mem::take(&mut pending))?;
                if let Some(metrics) = &mut metrics {
                    for line in &lines {
                        metrics.write(line)?;
                        observer.update(line);
                    }
                }
            }
            if checkpoint {
                if self.parts.iter().any(|p| p.pieces().is_some()) {
                    // Every rank writes its own pieces: nothing is gathered.
                    self.checkpoint_sharded(step)?;
                } else {
                    self.gather_optimizer_state()?;
                    if main {
                        self.checkpoint(step)?;
                    }
                    self.drop_gathered_state();
                }
            }
            if preview {
                // Whole parts on every rank for what rank 0 draws.
                self.unshard_parts()?;
                if main {
                    observer.preview(next, &self.parts)?;
                }
            }
            if stopping && !last {
                self.unshard_parts()?;
                return Ok(RunEnd::Stopped);
            }
            if preview && !last {
                self.shard_parts()?;
            }
        }
        self.log_peak_memory();
        self.unshard_parts()?;
        Ok(RunEnd::Completed)
    }

    /// Logs this rank's peak resident memory over the training steps (every rank: what a
    /// sharded run saves shows here, before its parts are gathered for the export).
    fn log_peak_memory(&self) {
        if let Some(bytes) = resident::peak_bytes() {
            tracing::info!(
                stage = %self.stage,
                rank = self.collective.rank(),
                shard = %self.config.shard_mode(),
                peak_rss_mb = bytes / 1_000_000,
                "the training steps' peak resident memory"
            );
        }
    }

    /// Runs `count` more updates and returns their metric lines (read once, at the end),
    /// writing nothing — no metrics file, previews or checkpoints: for benchmarks and scripts
    /// that drive the loop themselves. [`Self::run`] is the loop a training run uses.
    pub fn updates(&mut self, step: &mut impl TrainStep, count: u64) -> Result<Vec<MetricLine>> {
        let start = Instant::now();
        let phases = step.phases();
        self.synchronise()?;
        step.prepare(&self.parts)?;
        self.shard_parts()?;
        let pending = (0..count)
            .map(|_| self.one_update(step, &phases, start))
            .collect::<Result<Vec<_>>>()?;
        self.unshard_parts()?;
        self.settle(pending)
    }

    /// Update `self.step + 1`: every phase in order; its values are still on the device.
    fn one_update(
        &mut self,
        step: &mut impl TrainStep,
        phases: &[usize],
        start: Instant,
    ) -> Result<PendingLine> {
        let next = self.step + 1;
        let mut line = PendingLine {
            step: next,
            values: Vec::new(),
            finite: Vec::new(),
            seconds: 0.0,
        };
        for (phase, &part) in phases.iter().enumerate() {
            self.update(step, phase, part, next, &mut line)?;
        }
        self.step = next;
        line.seconds = start.elapsed().as_secs_f64();
        Ok(line)
    }

    /// Reads the pending updates' scalars (one transfer), tells the non-finite guard about
    /// each update in order (an error when too many in a row were bad), and returns their
    /// metric lines.
    fn settle(&mut self, pending: Vec<PendingLine>) -> Result<Vec<MetricLine>> {
        let device_values: Vec<Tensor> = pending
            .iter()
            .flat_map(|l| {
                let values = l.values.iter().filter_map(|(_, v)| match v {
                    Logged::Device(t) => Some(t.to_kind(Kind::Double).reshape([1])),
                    Logged::Host(_) => None,
                });
                let finite = l.finite.iter().flat_map(|(loss, ok)| {
                    [loss, ok].map(|t| t.to_kind(Kind::Double).reshape([1]))
                });
                values.chain(finite).collect::<Vec<_>>()
            })
            .collect();
        let mut read = if device_values.is_empty() {
            Vec::new()
        } else {
            Vec::<f64>::try_from(Tensor::cat(&device_values, 0).to_device(tch::Device::Cpu))?
        }
        .into_iter();
        let mut lines = Vec::with_capacity(pending.len());
        for line in pending {
            let mut values = BTreeMap::new();
            for (name, v) in line.values {
                let v = match v {
                    Logged::Host(h) => h,
                    Logged::Device(_) => read.next().expect("one value each"),
                };
                values.insert(name, Some(v).filter(|v: &f64| v.is_finite()));
            }
            for _ in line.finite {
                let loss = read.next().expect("one value each");
                let finite = read.next().expect("one value each") != 0.0;
                self.guard.observe(finite, loss, line.step)?;
            }
            lines.push(MetricLine {
                stage: self.stage.clone(),
                step: line.step,
                values,
                skipped: self.guard.skipped_total,
                seconds: line.seconds,
            });
        }
        Ok(lines)
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
    /// (the others frozen) into its flat fp32 gradient, average them over ranks, check them,
    /// clip, step the optimizer at the scheduled rate, update the EMA — all on the device: a
    /// non-finite loss or gradient turns the update into a no-op there, and `line` receives
    /// the values and the check to read later.
    fn update(
        &mut self,
        step: &mut impl TrainStep,
        phase: usize,
        index: usize,
        next: u64,
        line: &mut PendingLine,
    ) -> Result<()> {
        let accum = self.config.grad_accum;
        match self.parts[index].pieces() {
            Some(pieces) => pieces.zero_grad(),
            None => self.parts[index].flat.zero_grad(),
        }
        self.freeze_others(index, true);
        for pieces in self.parts.iter().filter_map(Part::pieces) {
            pieces.begin_phase()?;
        }
        let mut log = StepLog::default();
        let mut total: Option<Tensor> = None;
        let mut result = Ok(());
        for _ in 0..accum {
            match step.backward(phase, &mut self.rng, &mut log, accum) {
                Ok(loss) => {
                    match self.parts[index].pieces() {
                        Some(pieces) => pieces.collect_grads()?,
                        None => self.parts[index].flat.collect_grads(),
                    }
                    let loss = loss.to_kind(Kind::Double);
                    total = Some(match total {
                        None => loss,
                        Some(t) => t + loss,
                    });
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for pieces in self.parts.iter().filter_map(Part::pieces) {
            pieces.end_phase();
        }
        self.freeze_others(index, false);
        result?;
        let c = &*self.collective;
        let part = &mut self.parts[index];
        // Data parallel: every rank continues with the means over ranks (a sharded part's
        // pieces already hold them).
        let (master, grad) = match part.pieces() {
            Some(p) => (p.master().shallow_clone(), p.grad().shallow_clone()),
            None => {
                all_reduce_mean_flat(c, part.flat.grad())?;
                (
                    part.flat.master().shallow_clone(),
                    part.flat.grad().shallow_clone(),
                )
            }
        };
        let sharded = part.pieces().is_some();
        let mut logged: Vec<(String, Logged)> = log.means(accum).collect();
        let loss = total.expect("grad_accum ≥ 1") / accum as f64;
        let loss = all_reduce_logged(c, &mut logged, loss)?;

        let lr = (self.config.schedule).lr(part.optimizer.config().lr(), next, self.config.steps);
        // ‖g‖ as Σg² in f64 (over every rank's pieces when sharded: the same value either way,
        // so that clipping scales both alike).
        let mut squares = squared_norm(&grad).reshape([1]);
        if sharded {
            c.all_reduce_sum(&mut squares)?;
        }
        let norm = squares.reshape([]).sqrt();
        let (ok, grad_norm) = tch::no_grad(|| {
            let ok = norm.isfinite().logical_and(&loss.isfinite());
            let _ = grad.shallow_clone().masked_fill_(&ok.logical_not(), 0.0);
            if let Some(max_norm) = self.config.clip_grad {
                // `torch.nn.utils.clip_grad_norm_`: g ← g·min(1, max/(‖g‖ + 1e-6)).
                let coef = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
                let coef = coef.where_self(&ok, &coef.ones_like());
                let _ = grad.shallow_clone().g_mul_(&coef);
            }
            let grad_norm = norm.where_self(&ok, &norm.full_like(f64::NAN));
            (ok, grad_norm)
        });
        let okf = ok.to_kind(Kind::Double);
        if sharded {
            part.optimizer.step_pieces(&master, &grad, lr, &okf);
            part.pieces().expect("sharded").after_step()?;
            if let Some(ema) = &mut part.ema {
                ema.update_pieces(&master, &okf);
            }
        } else {
            part.optimizer.step_flat(&part.flat, lr, &okf);
            if let Some(Some(owners)) = self.owners.get(index) {
                broadcast_flat_from_owners(&*self.collective, &part.flat, owners)?;
            }
            part.flat.sync_compute();
            if let Some(ema) = &mut part.ema {
                ema.update_flat(&part.flat, &okf);
            }
        }
        step.after_update(phase, &self.parts)?;
        let suffix = if self.parts.len() == 1 {
            String::new()
        } else {
            format!("_{}", self.parts[index].name)
        };
        line.values.extend(logged);
        line.values.push((format!("lr{suffix}"), Logged::Host(lr)));
        line.values
            .push((format!("grad_norm{suffix}"), Logged::Device(grad_norm)));
        line.finite.push((loss, ok));
        Ok(())
    }
}

/// `Σ g²` of a flat buffer in f64, a bucket at a time (no f64 copy of the whole buffer).
fn squared_norm(grad: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = grad.numel() as i64;
        let mut total = Tensor::zeros([], (Kind::Double, grad.device()));
        let mut at = 0;
        while at < n {
            let len = BUCKET_ELEMENTS.min(n - at);
            let chunk = grad.narrow(0, at, len).to_kind(Kind::Double);
            total += chunk.square().sum(Kind::Double);
            at += len;
        }
        total
    })
}

/// One update's values before the host has read them.
struct PendingLine {
    step: u64,
    /// Logged values in order (a later one replaces an earlier one of the same name).
    values: Vec<(String, Logged)>,
    /// Per phase: the loss and the device's verdict (finite loss and gradients), 0-dim.
    finite: Vec<(Tensor, Tensor)>,
    seconds: f64,
}
