//! What the long commands share: progress bars with an ETA, and Ctrl-C / SIGTERM turned into
//! a stop flag (finish the step, checkpoint, exit 130).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
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
