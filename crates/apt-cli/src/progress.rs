//! What the long commands share: progress bars with an ETA (a stage's updates, pair shards,
//! the evaluation), and Ctrl-C / SIGTERM turned into a stop flag (finish the step, checkpoint,
//! exit 130).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use apt_flow::train::MetricLine;
use apt_pipeline::stages::{stage_steps, Outcome, Progress};
use apt_pipeline::{RunConfig, Stage};
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` units labelled `what`, with elapsed time and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>12} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("template"),
    );
    bar
}

/// Installs the Ctrl-C / SIGTERM handler and returns the flag it raises. `timeout` and some
/// schedulers deliver one termination twice (to the process and to its group): repeats within
/// 2 s count as one. A later one exits at once (130), without running exit handlers
/// (libtorch's teardown would race the running step).
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let first: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    ctrlc::set_handler(move || {
        let mut first = first.lock().expect("signal state");
        match *first {
            None => {
                *first = Some(std::time::Instant::now());
                flag.store(true, Ordering::SeqCst);
                eprintln!(
                    "\ninterrupted: stopping at the next safe point (training writes a \
                     checkpoint first) …"
                );
            }
            Some(at) if at.elapsed() < std::time::Duration::from_secs(2) => {}
            Some(_) => {
                eprintln!("\nsecond interrupt: exiting now (the last checkpoint is intact)");
                // SAFETY: `_exit` ends the process immediately; nothing is used after it.
                unsafe { libc::_exit(130) };
            }
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Progress bars and log lines for the stages.
pub struct StageBars {
    config: RunConfig,
    bar: Option<ProgressBar>,
    pairs: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Progress for StageBars {
    fn stage_start(&mut self, stage: Stage, steps: u64) {
        tracing::info!(stage = stage.name(), steps, "stage start");
        self.started = std::time::Instant::now();
        self.bar = Some(bar(steps, stage.name()));
    }

    fn update(&mut self, stage: Stage, m: &MetricLine) {
        let total = stage_steps(&self.config, stage);
        if let Some(b) = &self.bar {
            b.set_position(m.step);
            b.set_message(match stage {
                Stage::AptImage | Stage::Apt => format!(
                    "D(real) {:+.2} D(fake) {:+.2} aR1 {:.4} G {:.3}",
                    m.value("d_real"),
                    m.value("d_fake"),
                    m.value("ar1"),
                    m.value("g_loss")
                ),
                _ => format!("loss {:.4} lr {:.2e}", m.value("loss"), m.value("lr")),
            });
        }
        if m.step.is_multiple_of(50) || m.step == total {
            let values = serde_json::to_string(&m.values).unwrap_or_default();
            tracing::info!(stage = %m.stage, step = m.step, skipped = m.skipped, %values, "progress");
        }
    }

    fn pairs(&mut self, done: usize, total: usize) {
        let b = self.pairs.get_or_insert_with(|| bar(total as u64, "pairs"));
        b.set_position(done as u64);
        if done == total {
            b.finish_and_clear();
            self.pairs = None;
        }
    }

    fn stage_end(&mut self, stage: Stage, outcome: &Outcome) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(b) = self.pairs.take() {
            b.finish_and_clear();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let stopped = matches!(outcome, Outcome::Stopped);
        tracing::info!(stage = stage.name(), seconds, stopped, "stage end");
        if let Outcome::Completed(report) = outcome {
            let json = serde_json::to_value(report).unwrap_or_default();
            let bad = json["bad_samples"].as_array().map_or(0, Vec::len);
            if bad > 0 {
                tracing::warn!(
                    stage = stage.name(),
                    files = bad,
                    "bad samples were skipped (listed in the stage's report.json)"
                );
            }
            println!(
                "{} report ({seconds:.0} s):\n{}",
                stage.name(),
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }

    fn skipped(&mut self, stage: Stage) {
        println!("{}: finished earlier; skipping", stage.name());
    }

    fn evaluated(&mut self, done: usize, total: usize, name: &str) {
        let b = self
            .bar
            .get_or_insert_with(|| bar(total as u64, "evaluate"));
        b.set_position(done as u64);
        b.set_message(name.to_string());
        tracing::info!(done, total, model = name, "evaluated");
        if done == total {
            b.finish_and_clear();
            self.bar = None;
        }
    }
}

impl StageBars {
    /// Bars for the stages of `config`.
    pub fn new(config: RunConfig) -> Self {
        Self {
            config,
            bar: None,
            pairs: None,
            started: std::time::Instant::now(),
        }
    }

    /// Follows another run (a study's next variant).
    pub fn follow(&mut self, config: RunConfig) {
        self.config = config;
    }
}
