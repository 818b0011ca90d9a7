//! The one error type of the pipeline: every message names the key, file or directory and
//! says what was expected.

use std::path::PathBuf;

/// Everything that can go wrong running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A configuration value is out of range, missing, or inconsistent with the run.
    #[error("invalid config: `{key}` {reason}")]
    Config {
        /// The key, as spelled in the TOML file (dotted).
        key: String,
        /// What was expected.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run directory, artefact or weights file is missing, damaged or does not fit.
    #[error("{path}: {reason}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Another process holds the run directory.
    #[error(
        "{dir} is in use by another apt process (pid {pid}); wait for it to finish or stop it"
    )]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it.
        pid: String,
    },
    /// The stop flag was raised (Ctrl-C) outside a training loop; nothing was written.
    #[error("interrupted")]
    Interrupted,
    /// Training, sampling or checkpointing failed.
    #[error(transparent)]
    Flow(#[from] apt_flow::FlowError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] apt_mmdit::MmditError),
    /// The VAE failed (loading, shapes).
    #[error(transparent)]
    Vae(#[from] apt_vae::VaeError),
    /// Data loading, decoding or writing failed.
    #[error(transparent)]
    Data(#[from] apt_data::DataError),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Shorthand for this crate's results.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// A [`PipelineError::Config`] for `key`.
pub fn config_error(key: &str, reason: impl Into<String>) -> PipelineError {
    PipelineError::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A closure mapping an I/O error on `path` to [`PipelineError::Io`].
pub fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PipelineError {
    /// True for an interrupted run (raised stop flag), at any depth.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, PipelineError::Interrupted)
    }
}
