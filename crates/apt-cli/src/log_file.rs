//! `runs/NAME/log.txt`: every `tracing` event of a training run, without colours, next to the
//! console output. The file is opened once the run directory is known.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

static LOG: OnceLock<Mutex<File>> = OnceLock::new();

/// Starts appending log events to `path`.
pub fn open(path: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let _ = LOG.set(Mutex::new(file));
    Ok(())
}

/// A `tracing` writer that goes to the log file once it is open, and nowhere before.
pub struct LogFileWriter;

impl Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG.get() {
            Some(file) => file.lock().expect("log file lock").write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG.get() {
            Some(file) => file.lock().expect("log file lock").flush(),
            None => Ok(()),
        }
    }
}
