//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong in flow training, sampling and checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A configuration value is out of range or missing.
    #[error("invalid config: `{key}` {reason}")]
    Config {
        /// The offending field as a dotted path: the prefix the caller passed to `validate`,
        /// then the field's serialised name (e.g. `train.optimizer.lr`).
        key: String,
        /// What was expected.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint or data file is missing parts or corrupt.
    #[error("{path}: {reason}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Too many non-finite steps in a row: the run stops; the last good checkpoint is intact.
    #[error("{count} non-finite (NaN/Inf) steps in a row at step {step}; stopping (the last good checkpoint is intact)")]
    Diverged {
        /// Consecutive bad steps.
        count: usize,
        /// The step where it happened.
        step: u64,
    },
    /// A collective operation across the ranks of a data-parallel run failed, or the ranks
    /// disagree (different models, configs or steps).
    #[error("data parallel: {0}")]
    Collective(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] apt_mmdit::MmditError),
    /// A data source or text encoder supplied by the caller failed (its message names the file).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Shorthand for this crate's results.
pub type Result<T, E = FlowError> = std::result::Result<T, E>;

/// A [`FlowError::Config`] for `key`.
pub fn config_error(key: &str, reason: impl Into<String>) -> FlowError {
    FlowError::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}
