//! The one error type of this crate: every variant names the file (or line) and the reason.

use std::path::PathBuf;

/// Everything that can go wrong reading or writing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a decodable video or image.
    #[error("{path}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What went wrong, in words.
        reason: String,
    },
    /// The clip is shorter than the request.
    #[error("{path}: {frames} decodable frames, but the clip needs {needed}")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Frames the file decodes to.
        frames: usize,
        /// Frames the request needs.
        needed: usize,
    },
    /// A data set description (manifest line, caption file, option) is wrong.
    #[error("{path}: {reason}")]
    Dataset {
        /// The manifest or folder (with `:line` for manifest lines).
        path: PathBuf,
        /// What was expected.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option `{key}`: {reason}")]
    Option {
        /// The option's name.
        key: &'static str,
        /// What was expected.
        reason: String,
    },
    /// An error from libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Shorthand for this crate's results.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// The file this error is about, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Decode { path, .. }
            | DataError::TooShort { path, .. }
            | DataError::Dataset { path, .. } => Some(path),
            DataError::Option { .. } | DataError::Torch(_) => None,
        }
    }
}

pub(crate) fn decode_error(path: &std::path::Path, reason: impl Into<String>) -> DataError {
    DataError::Decode {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
