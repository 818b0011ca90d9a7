//! `metrics.jsonl`: one JSON line per update, written by the training loop.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{FlowError, Result};

/// The metrics log's file name, in the loop's directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`: the stage, the update, every logged value (the step's own —
/// `loss` for a flow stage; `d_real`, `d_fake`, `d_loss`, `ar1`, `g_loss` for APT — and the
/// loop's `lr` and `grad_norm`, suffixed `_<part>` when several models train), the non-finite
/// steps so far and the seconds since the run (or resume) started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricLine {
    /// The run's label ([`Trainer::stage`](super::Trainer::stage)).
    pub stage: String,
    /// Update number (1-based).
    pub step: u64,
    /// Logged values (a NaN is written as `null`, e.g. the gradient norm of a skipped step).
    #[serde(flatten)]
    pub values: BTreeMap<String, Option<f64>>,
    /// Non-finite (half-)steps so far.
    pub skipped: u64,
    /// Seconds since the run (or resume) started (see [`MetricsLog::training_seconds`] for a
    /// stage's total).
    pub seconds: f64,
}

impl MetricLine {
    /// The value called `name` (NaN when absent or not finite when written).
    pub fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().flatten().unwrap_or(f64::NAN)
    }
}

/// A logged value: known on the host, or a 0-dim tensor the loop reads when it writes the
/// line (so that logging does not wait for the device).
#[derive(Debug)]
pub enum Logged {
    /// A host number.
    Host(f64),
    /// A 0-dim tensor on the training device (f64).
    Device(Tensor),
}

impl Clone for Logged {
    fn clone(&self) -> Self {
        match self {
            Logged::Host(v) => Logged::Host(*v),
            Logged::Device(t) => Logged::Device(t.shallow_clone()),
        }
    }
}

/// Scalars a step logs over the micro-batches of one update; the loop writes their means.
#[derive(Debug, Default, Clone)]
pub struct StepLog {
    sums: BTreeMap<String, Logged>,
}

impl StepLog {
    /// Adds host number `value` to `name`'s sum (once per micro-batch).
    pub fn add(&mut self, name: &str, value: f64) {
        match self
            .sums
            .entry(name.to_string())
            .or_insert(Logged::Host(0.0))
        {
            Logged::Host(sum) => *sum += value,
            Logged::Device(sum) => *sum = &*sum + value,
        }
    }

    /// Adds a scalar tensor (e.g. a loss; detached, not read now) to `name`'s sum.
    pub fn add_tensor(&mut self, name: &str, value: &Tensor) {
        let value = value.detach().to_kind(Kind::Double).reshape([]);
        let sum = match self.sums.remove(name) {
            None => value,
            Some(Logged::Host(h)) => value + h,
            Some(Logged::Device(t)) => t + value,
        };
        self.sums.insert(name.to_string(), Logged::Device(sum));
    }

    /// Every logged value divided by the number of micro-batches.
    pub fn means(&self, micro_batches: usize) -> impl Iterator<Item = (String, Logged)> + '_ {
        let n = micro_batches as f64;
        self.sums.iter().map(move |(k, v)| {
            let mean = match v {
                Logged::Host(h) => Logged::Host(h / n),
                Logged::Device(t) => Logged::Device(t / n),
            };
            (k.clone(), mean)
        })
    }
}

/// Appends one JSON object per line to `<dir>/metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens (creating `dir` and the file when missing) for appending.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FlowError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(METRICS_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self { file, path })
    }

    /// Appends `line`.
    pub fn write(&mut self, line: &impl Serialize) -> Result<()> {
        writeln!(
            self.file,
            "{}",
            serde_json::to_string(line).expect("metrics serialise")
        )
        .map_err(|source| FlowError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Reads every line of a `metrics.jsonl`, keeping the last one per step (a resumed run
    /// repeats the steps after its checkpoint). A missing file reads as no lines.
    pub fn read(path: &Path) -> Vec<MetricLine> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut by_step = BTreeMap::new();
        for line in text.lines() {
            if let Ok(m) = serde_json::from_str::<MetricLine>(line) {
                by_step.insert(m.step, m);
            }
        }
        by_step.into_values().collect()
    }

    /// The training time in a `metrics.jsonl`, in seconds, over every run that wrote to it:
    /// each line's `seconds` counts from its own run's start (a resume starts again at 0), so
    /// this sums the last value of every run. `None` when the file has no lines.
    pub fn training_seconds(path: &Path) -> Option<f64> {
        let text = std::fs::read_to_string(path).ok()?;
        let lines = text
            .lines()
            .filter_map(|line| serde_json::from_str::<MetricLine>(line).ok());
        let mut total = None;
        let (mut previous_step, mut previous_seconds) = (u64::MAX, f64::INFINITY);
        for m in lines {
            // A new run starts its clock again, and repeats (or continues after) the steps of
            // its checkpoint: bank the run before.
            if m.seconds < previous_seconds || m.step <= previous_step {
                let banked = if previous_step == u64::MAX {
                    0.0
                } else {
                    previous_seconds
                };
                *total.get_or_insert(0.0) += banked;
            }
            (previous_step, previous_seconds) = (m.step, m.seconds);
        }
        total.map(|t: f64| t + previous_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_time_adds_up_every_run_of_a_resumed_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path()).unwrap();
        // Steps 1-3 (killed after the checkpoint at 2), then a resume from step 2.
        for (step, seconds) in [(1, 10.0), (2, 20.0), (3, 30.0), (3, 5.0), (4, 15.0)] {
            let line = MetricLine {
                stage: "pretrain".into(),
                step,
                values: BTreeMap::new(),
                skipped: 0,
                seconds,
            };
            log.write(&line).unwrap();
        }
        let path = dir.path().join(METRICS_FILE);
        assert_eq!(MetricsLog::training_seconds(&path), Some(45.0));
        assert_eq!(MetricsLog::training_seconds(&dir.path().join("none")), None);
    }
}
