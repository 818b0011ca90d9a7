//! A diffusers Wan 2.1 text-to-video pipeline directory (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`'s
//! layout), the teacher of a run with `[model] from = DIR`: `model_index.json`,
//! `transformer/`, `text_encoder/`, `tokenizer/`, `vae/` and `scheduler/`.

use std::path::{Path, PathBuf};

use crate::error::{config_error, Result};

/// diffusers' class of a Wan 2.1 text-to-video pipeline (`model_index.json`'s `_class_name`).
pub const WAN_PIPELINE_CLASS: &str = "WanPipeline";

/// Wan 2.1's default negative prompt (the reference code's `sample_neg_prompt`, which the
/// diffusers pipeline's examples pass too): the "unconditional" half of its guidance.
pub const WAN_NEGATIVE_PROMPT: &str =
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，\
画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，\
画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，\
背景人很多，倒着走";

/// The folders of a Wan pipeline directory.
const PARTS: [&str; 5] = [
    "transformer",
    "text_encoder",
    "tokenizer",
    "vae",
    "scheduler",
];

/// A checked Wan pipeline directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanPipelineDir {
    root: PathBuf,
}

impl WanPipelineDir {
    /// Opens `root`, checking that `model_index.json` names a `WanPipeline` and that every part's
    /// folder exists; errors name `key` (the config key that gave the directory) and the file.
    pub fn open(root: &Path, key: &str) -> Result<Self> {
        let index = root.join("model_index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| {
            config_error(
                key,
                format!(
                    "{}: {e} (expected a diffusers Wan 2.1 pipeline directory, e.g. \
                     Wan-AI/Wan2.1-T2V-1.3B-Diffusers)",
                    index.display()
                ),
            )
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| config_error(key, format!("{}: not JSON: {e}", index.display())))?;
        let class = json["_class_name"].as_str().unwrap_or("");
        if class != WAN_PIPELINE_CLASS {
            return Err(config_error(
                key,
                format!(
                    "{} is a {class:?} pipeline, expected {WAN_PIPELINE_CLASS:?}",
                    index.display()
                ),
            ));
        }
        for part in PARTS {
            let dir = root.join(part);
            if !dir.is_dir() {
                return Err(config_error(
                    key,
                    format!("{}: missing (a Wan pipeline has {PARTS:?})", dir.display()),
                ));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `transformer/` (diffusers' `WanTransformer3DModel`).
    pub fn transformer(&self) -> PathBuf {
        self.root.join("transformer")
    }

    /// `text_encoder/` (transformers' `UMT5EncoderModel`).
    pub fn text_encoder(&self) -> PathBuf {
        self.root.join("text_encoder")
    }

    /// `tokenizer/` (its `tokenizer.json`).
    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer")
    }

    /// `vae/` (diffusers' `AutoencoderKLWan`).
    pub fn vae(&self) -> PathBuf {
        self.root.join("vae")
    }

    /// The scheduler's `flow_shift` (`scheduler/scheduler_config.json`; `None` when it has
    /// none): the time shift the pipeline samples with (3 for 480p, 5 for 720p).
    pub fn flow_shift(&self) -> Result<Option<f64>> {
        let path = self.root.join("scheduler").join("scheduler_config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| config_error("model.from", format!("{}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            config_error("model.from", format!("{}: not JSON: {e}", path.display()))
        })?;
        Ok(json["flow_shift"].as_f64())
    }

    /// Width of the text encoder's token states (`text_encoder/config.json`'s `d_model`).
    pub fn text_width(&self) -> Result<usize> {
        let path = self.text_encoder().join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| config_error("model.from", format!("{}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            config_error("model.from", format!("{}: not JSON: {e}", path.display()))
        })?;
        json["d_model"].as_u64().map(|d| d as usize).ok_or_else(|| {
            config_error(
                "model.from",
                format!("{}: no `d_model` (not a UMT5 encoder)", path.display()),
            )
        })
    }
}
