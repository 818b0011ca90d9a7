//! Locating the files `cargo xtask setup` fetches (test clips, the MiniLM text encoder).

use std::path::PathBuf;

use crate::error::{DataError, Result};

/// The assets directory (`$APT_ASSETS_HOME`, else `~/.cache/apt-rs/assets`), checked to exist.
pub fn assets_dir() -> Result<PathBuf> {
    let dir = apt_build::assets_dir().ok_or_else(|| DataError::Option {
        key: "APT_ASSETS_HOME",
        reason: "not set, and neither is HOME".into(),
    })?;
    if !dir.join("clips").is_dir() {
        return Err(DataError::Dataset {
            path: dir,
            reason: "no test assets here: run `cargo xtask setup`".into(),
        });
    }
    Ok(dir)
}

/// A test clip by name (`bikes.mp4`, `derived/bikes_vp9.webm`, …).
pub fn clip(name: &str) -> Result<PathBuf> {
    Ok(assets_dir()?.join("clips").join(name))
}

/// The directory holding all-MiniLM-L6-v2 (`model.safetensors`, `tokenizer.json`, `config.json`).
pub fn minilm_dir() -> Result<PathBuf> {
    Ok(assets_dir()?.join("minilm"))
}
