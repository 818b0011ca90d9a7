//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong when building, feeding, loading or saving a VAE. Messages name
/// the file, key or argument and say what was expected.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A configuration value is out of range, unsupported or inconsistent with another one.
    #[error("invalid VAE config: `{key}` {message}")]
    Config {
        /// The offending key (as spelled in diffusers' `config.json`).
        key: String,
        /// What was expected.
        message: String,
    },
    /// An input has the wrong shape, rank or size.
    #[error("bad input `{argument}`: expected {expected}, got shape {got:?}")]
    Input {
        /// The argument name (`video`, `latents`, `image`, …).
        argument: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The shape that was passed.
        got: Vec<i64>,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could be read but not parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Loading or saving weights failed (missing/unexpected/mis-shaped keys name the tensors).
    #[error(transparent)]
    Weights(#[from] apt_mmdit::MmditError),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// This crate's result type.
pub type Result<T, E = VaeError> = std::result::Result<T, E>;
