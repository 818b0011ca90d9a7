//! diffusers `save_pretrained` directories: strict loading (every key, every shape) and atomic
//! saving, for both VAEs.

use std::path::Path;

use apt_mmdit::weights::{
    diffusers_weight_files, load_strict, save_safetensors, write_atomically, DIFFUSERS_WEIGHTS,
};
use serde::Serialize;
use tch::nn;

use crate::config::{diffusers_class_name, ImageVaeConfig, WanVaeConfig};
use crate::error::{Result, VaeError};
use crate::image_vae::ImageVae;
use crate::wan::WanVae;

/// diffusers' class name of the Wan 2.1 video VAE.
pub const WAN_CLASS: &str = "AutoencoderKLWan";
/// diffusers' class name of the SD3 / FLUX image VAE.
pub const IMAGE_CLASS: &str = "AutoencoderKL";

/// Reads `dir/config.json` and checks its `_class_name` (when present) is `class`.
fn read_config(dir: &Path, class: &str) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| VaeError::Io {
        path: path.clone(),
        source,
    })?;
    match diffusers_class_name(&text) {
        Some(name) if name != class => Err(VaeError::Parse {
            path,
            message: format!("`_class_name` is {name:?}, expected {class:?}"),
        }),
        _ => Ok(text),
    }
}

/// The `_class_name` of a diffusers directory's `config.json`.
pub fn class_of(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| VaeError::Io {
        path: path.clone(),
        source,
    })?;
    diffusers_class_name(&text).ok_or_else(|| VaeError::Parse {
        path,
        message: format!("no `_class_name` (expected {WAN_CLASS:?} or {IMAGE_CLASS:?})"),
    })
}

fn parse_error(dir: &Path) -> impl FnOnce(VaeError) -> VaeError + '_ {
    move |e| match e {
        VaeError::Config { key, message } => VaeError::Parse {
            path: dir.join("config.json"),
            message: format!("`{key}` {message}"),
        },
        other => other,
    }
}

/// Writes `config.json` (with `_class_name`) and the weights of `vs` into `dir`, atomically
/// file by file, in the layout diffusers' `from_pretrained` reads.
fn save_dir(vs: &nn::VarStore, dir: &Path, class: &str, cfg: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| VaeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut json = serde_json::to_value(cfg).expect("configs serialise");
    json["_class_name"] = serde_json::Value::from(class);
    let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
    let config = dir.join("config.json");
    write_atomically(&config, |tmp| {
        std::fs::write(tmp, &text).map_err(|source| apt_mmdit::MmditError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    save_safetensors(vs, dir.join(DIFFUSERS_WEIGHTS))?;
    Ok(())
}

impl WanVae {
    /// Builds the VAE from a diffusers `AutoencoderKLWan` directory (`config.json` +
    /// safetensors), loading every weight strictly into `vs` (which must be empty): a missing,
    /// unexpected or mis-shaped key is an error naming it.
    pub fn from_diffusers_dir(vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let text = read_config(dir, WAN_CLASS)?;
        let cfg = WanVaeConfig::from_diffusers_json(&text).map_err(parse_error(dir))?;
        let vae = WanVae::new(&vs.root(), &cfg)?;
        load_strict(vs, &diffusers_weight_files(dir)?, dir)?;
        Ok(vae)
    }

    /// Writes this VAE (its variables in `vs`) as a diffusers directory.
    pub fn save_diffusers_dir(&self, vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<()> {
        save_dir(vs, dir.as_ref(), WAN_CLASS, self.config())
    }
}

impl ImageVae {
    /// Builds the VAE from a diffusers `AutoencoderKL` directory, loading strictly into `vs`.
    pub fn from_diffusers_dir(vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let text = read_config(dir, IMAGE_CLASS)?;
        let cfg = ImageVaeConfig::from_diffusers_json(&text).map_err(parse_error(dir))?;
        let vae = ImageVae::new(&vs.root(), &cfg)?;
        load_strict(vs, &diffusers_weight_files(dir)?, dir)?;
        Ok(vae)
    }

    /// Writes this VAE (its variables in `vs`) as a diffusers directory.
    pub fn save_diffusers_dir(&self, vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<()> {
        save_dir(vs, dir.as_ref(), IMAGE_CLASS, self.config())
    }
}
