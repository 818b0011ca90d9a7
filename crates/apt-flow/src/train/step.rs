//! What a stage plugs into the loop: its [`TrainStep`] (the loss of a micro-batch per phase,
//! its data position) and an [`Observer`] that follows the run; and how a run ended.

use tch::Tensor;

use super::metrics::{MetricLine, StepLog};
use super::part::Part;
use crate::data::Cursor;
use crate::error::Result;
use crate::rng::TensorRng;

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

    /// The loss of the next micro-batch of phase `phase` (all randomness from `rng`), with its
    /// graph: [`backward`](Self::backward) back-propagates it. Values added to `log` are
    /// written as their means over the micro-batches.
    fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor>;

    /// Whether the step recomputes activations during the backward pass (less memory, one
    /// more forward, the same gradients): [`backward`](Self::backward) then calls
    /// [`backward_recomputed`](Self::backward_recomputed). Default: no.
    fn recomputes(&self) -> bool {
        false
    }

    /// The next micro-batch with activation recomputation: the same draws and loss as
    /// [`loss`](Self::loss), but the step drives the backward pass of `loss / accum` through
    /// the network it trains itself; returns the detached loss. Only called when
    /// [`recomputes`](Self::recomputes); by default the plain pass.
    fn backward_recomputed(
        &mut self,
        phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let loss = self.loss(phase, rng, log)?;
        Ok(backward_scaled(&loss, accum))
    }

    /// Computes the next micro-batch's loss and back-propagates `loss / accum` into the
    /// trained part; returns the loss (a detached scalar tensor: the loop reads it when it
    /// writes metrics, not now). What the loop calls: [`loss`](Self::loss) then `backward`, or
    /// [`backward_recomputed`](Self::backward_recomputed) for a step that
    /// [`recomputes`](Self::recomputes). Steps do not override it.
    fn backward(
        &mut self,
        phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        if self.recomputes() {
            return self.backward_recomputed(phase, rng, log, accum);
        }
        let loss = self.loss(phase, rng, log)?;
        Ok(backward_scaled(&loss, accum))
    }

    /// Called after every update of phase `phase`. The non-finite check runs on the device,
    /// so this also follows an update it turned into a no-op (the weights did not change).
    fn after_update(&mut self, _phase: usize, _parts: &[Part]) -> Result<()> {
        Ok(())
    }

    /// The data position to save.
    fn cursor(&self) -> Cursor;

    /// Continues the data stream from a saved position.
    fn restore(&mut self, cursor: Cursor) -> Result<()>;
}

/// Back-propagates `loss / accum` and returns the detached loss (the loop's default
/// backward).
pub fn backward_scaled(loss: &Tensor, accum: usize) -> Tensor {
    (loss / accum as f64).backward();
    loss.detach()
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
pub enum RunEnd {
    /// All steps done.
    Completed,
    /// The stop flag was raised; a checkpoint was written after the current update.
    Stopped,
}
