//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong when building, feeding, loading or saving an [`crate::Mmdit`].
/// Messages name the file, key or argument and say what was expected.
#[derive(Debug, thiserror::Error)]
pub enum MmditError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid model config: `{key}` {message}")]
    Config {
        /// The offending key (as spelled in the TOML / JSON file).
        key: String,
        /// What was expected.
        message: String,
    },
    /// An unknown preset name.
    #[error("unknown model preset `{name}` (expected one of: {known})")]
    UnknownPreset {
        /// The name that was asked for.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// A model input has the wrong shape, rank or size.
    #[error("bad input `{argument}`: expected {expected}, got shape {got:?}")]
    Input {
        /// The argument name (`latents`, `context`, `pooled`, `t`, …).
        argument: &'static str,
        /// What was expected, in words.
        expected: String,
        /// The shape that was passed.
        got: Vec<i64>,
    },
    /// A model input lives on another device than the model.
    #[error("bad input `{argument}`: it is on {got:?} but the model is on {expected:?}")]
    Device {
        /// The argument name.
        argument: &'static str,
        /// The model's device.
        expected: tch::Device,
        /// The input's device.
        got: tch::Device,
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
    /// A weights file does not match the model exactly.
    #[error(
        "{path}: weights do not match the model{}{}{}",
        list(" missing keys", missing),
        list(" unexpected keys", unexpected),
        list(" wrong shapes", mismatched)
    )]
    Weights {
        /// The weights file (or directory).
        path: PathBuf,
        /// Model variables absent from the file.
        missing: Vec<String>,
        /// File tensors the model has no variable for.
        unexpected: Vec<String>,
        /// `key: file shape vs model shape` for tensors whose shape differs.
        mismatched: Vec<String>,
    },
    /// A sharded run could not gather or release a block's weights.
    #[error("block {block}: {message}")]
    Sharding {
        /// The block's variable prefix.
        block: String,
        /// What failed.
        message: String,
    },
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn list(title: &str, items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    const SHOWN: usize = 12;
    let mut s = format!(
        ";{title} ({}): {}",
        items.len(),
        items
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if items.len() > SHOWN {
        s.push_str(", …");
    }
    s
}

/// Shorthand for this crate's results.
pub type Result<T, E = MmditError> = std::result::Result<T, E>;

pub(crate) fn config_error(key: &str, message: impl Into<String>) -> MmditError {
    MmditError::Config {
        key: key.to_string(),
        message: message.into(),
    }
}
