//! Files every stage writes into its run directory: the `metrics.jsonl` log, JSON reports, and
//! exported weights with their `model.toml`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use apt_mmdit::MmditConfig;
use serde::Serialize;
use tch::nn;

use crate::error::{FlowError, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlowError + '_ {
    move |source| FlowError::Io {
        path: path.to_path_buf(),
        source,
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
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("metrics.jsonl");
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
        .map_err(io(&self.path))
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(value).expect("reports serialise"),
    )
    .map_err(io(path))
}

/// Saves the weights of `vs` as `<dir>/<file>` (diffusers names, atomic) next to `model.toml`.
pub fn export_model(
    vs: &nn::VarStore,
    cfg: &MmditConfig,
    dir: &Path,
    file: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(file);
    apt_mmdit::save_safetensors(vs, &path)?;
    let toml = dir.join("model.toml");
    std::fs::write(&toml, cfg.to_toml_string()).map_err(io(&toml))?;
    Ok(path)
}
