//! Non-finite steps: a NaN/Inf loss or gradient skips the update and is counted; after
//! `max_consecutive` in a row the run stops (the last good checkpoint is left intact).

use serde::{Deserialize, Serialize};
use tch::nn;

use crate::error::{FlowError, Result};

/// Counts non-finite steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFiniteGuard {
    /// Stop after this many bad steps in a row.
    pub max_consecutive: usize,
    /// Bad steps in a row so far.
    pub consecutive: usize,
    /// Bad steps in the whole run.
    pub skipped_total: u64,
}

impl NonFiniteGuard {
    /// A guard stopping after `max_consecutive` bad steps in a row.
    pub fn new(max_consecutive: usize) -> Self {
        Self {
            max_consecutive,
            consecutive: 0,
            skipped_total: 0,
        }
    }

    /// `Ok(true)` when the step may be applied, `Ok(false)` when it must be skipped, and an
    /// error when too many bad steps came in a row.
    pub fn check(&mut self, loss: f64, vs: &nn::VarStore, step: u64) -> Result<bool> {
        self.observe(loss.is_finite() && grads_finite(vs), loss, step)
    }

    /// Counts step `step` as finite or not (the loop checks on the device and reports here
    /// when it reads its scalars); the same answers as [`Self::check`].
    pub fn observe(&mut self, finite: bool, loss: f64, step: u64) -> Result<bool> {
        if finite {
            self.consecutive = 0;
            return Ok(true);
        }
        self.consecutive += 1;
        self.skipped_total += 1;
        tracing::warn!(
            step,
            loss,
            consecutive = self.consecutive,
            "non-finite step skipped"
        );
        if self.consecutive >= self.max_consecutive {
            return Err(FlowError::Diverged {
                count: self.consecutive,
                step,
            });
        }
        Ok(false)
    }
}

/// True when every gradient of `vs` is finite.
pub fn grads_finite(vs: &nn::VarStore) -> bool {
    tch::no_grad(|| {
        vs.trainable_variables()
            .iter()
            .map(|v| v.grad())
            .filter(|g| g.defined())
            .all(|g| g.isfinite().all().int64_value(&[]) != 0)
    })
}
