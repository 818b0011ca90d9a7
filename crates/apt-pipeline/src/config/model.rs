//! `[model]`: the network every stage trains or takes — an MMDiT preset or config, or a
//! diffusers Wan 2.1 pipeline directory (`from`) whose transformer is the teacher and whose
//! VAE, text encoder and tokenizer the run uses — and its checks against the data and the
//! text encoder.

use std::path::{Path, PathBuf};

use apt_mmdit::{MmditConfig, ModelConfig, Prediction};
use serde::{Deserialize, Serialize};

use super::RunConfig;
use crate::error::{config_error, Result};
use crate::wan_dir::WanPipelineDir;

/// Width of MiniLM's token states and pooled vector: what an MMDiT's text widths must be.
pub const MINILM_WIDTH: i64 = 384;

/// `[model]`: a preset name, a full MMDiT config, or a Wan pipeline directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A built-in preset: the MMDiT's `tiny`, `small`, `sd3-medium`, `seaweed-8b`, or Wan
    /// 2.1's `wan2.1-1.3b`, `wan2.1-14b`. Beside `from`, the size the directory must hold
    /// (so that `--dry-run` can size the run before the download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// A full MMDiT config (instead of a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MmditConfig>,
    /// A diffusers Wan 2.1 text-to-video pipeline directory (`model_index.json`,
    /// `transformer/`, `text_encoder/`, `tokenizer/`, `vae/`, `scheduler/`): its transformer is
    /// the teacher (no pre-training), and its VAE and UMT5 text encoder are the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// What the network predicts, `"velocity"` (every preset's) or `"sample"` (x-prediction,
    /// JiT); overrides the preset's or the config's (MMDiT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
}

impl ModelSection {
    /// The Wan pipeline directory of `from` (when non-empty).
    pub fn import_from(&self) -> Option<&Path> {
        self.from.as_deref().filter(|p| !p.as_os_str().is_empty())
    }
}

impl RunConfig {
    /// The Wan pipeline directory `[model] from` names, checked (`None` without `from`).
    pub fn wan_pipeline(&self) -> Result<Option<WanPipelineDir>> {
        self.model
            .import_from()
            .map(|dir| WanPipelineDir::open(dir, "model.from"))
            .transpose()
    }

    /// The model config of `[model]`, validated on its own: the preset, the config, or the
    /// transformer of `from` (which must equal the preset when both are given; a `from` that
    /// does not exist yet falls back to the preset, so a run can be sized before the download).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let m = &self.model;
        let cfg = match (&m.preset, &m.config, m.import_from()) {
            (Some(name), None, None) => ModelConfig::preset(name)?,
            (None, Some(cfg), None) => ModelConfig::Mmdit(cfg.clone()),
            (preset, None, Some(dir)) => self.model_of_directory(dir, preset.as_deref())?,
            _ => {
                return Err(config_error(
                    "model",
                    "give one of `preset`, `config` and `from` (a Wan pipeline directory, \
                     optionally with the `preset` it must hold)",
                ))
            }
        };
        let cfg = match (cfg, m.prediction) {
            (ModelConfig::Mmdit(mut c), Some(p)) => {
                c.prediction = p;
                ModelConfig::Mmdit(c)
            }
            (ModelConfig::Wan(_), Some(Prediction::Sample)) => {
                return Err(config_error(
                    "model.prediction",
                    "is \"sample\" but Wan 2.1 predicts the velocity",
                ))
            }
            (cfg, _) => cfg,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn model_of_directory(&self, dir: &Path, preset: Option<&str>) -> Result<ModelConfig> {
        let expected = preset.map(ModelConfig::preset).transpose()?;
        if let Some(e) = &expected {
            if e.as_wan().is_none() {
                return Err(config_error(
                    "model.preset",
                    "beside `from` must be a Wan preset (wan2.1-1.3b, wan2.1-14b)",
                ));
            }
        }
        if !dir.exists() {
            return expected.ok_or_else(|| {
                config_error(
                    "model.from",
                    format!("{}: no such directory", dir.display()),
                )
            });
        }
        let transformer = WanPipelineDir::open(dir, "model.from")?.transformer();
        let found = ModelConfig::from_diffusers_dir(&transformer)
            .map_err(|e| config_error("model.from", e.to_string()))?;
        if found.as_wan().is_none() {
            return Err(config_error(
                "model.from",
                format!(
                    "{} holds an SD3 transformer: `from` takes a Wan 2.1 pipeline",
                    transformer.display()
                ),
            ));
        }
        if let Some(e) = expected {
            if e != found {
                return Err(config_error(
                    "model.preset",
                    format!(
                        "is {:?} but {} holds another size",
                        preset.unwrap_or_default(),
                        transformer.join("config.json").display()
                    ),
                ));
            }
        }
        Ok(found)
    }

    /// The model config, checked against the data and the text encoder: what every stage
    /// needs before it can run here.
    pub fn model(&self) -> Result<ModelConfig> {
        let cfg = self.model_config()?;
        self.check_compatibility(&cfg)?;
        Ok(cfg)
    }

    /// Whether `cfg` fits the clips of `[data]` (and of the APT image stage) and the text
    /// encoder (MiniLM for the MMDiT, the pipeline's UMT5 for Wan).
    pub fn check_compatibility(&self, cfg: &ModelConfig) -> Result<()> {
        let [c, t, h, w] = self.model_clip_shape()?;
        if cfg.in_channels() as i64 != c || cfg.out_channels() as i64 != c {
            return Err(config_error(
                "model",
                format!(
                    "takes {} → {} channels but the data has {c}",
                    cfg.in_channels(),
                    cfg.out_channels()
                ),
            ));
        }
        let [pt, ph, pw] = cfg.patch_size().map(|p| p as i64);
        if t % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(config_error(
                "data",
                format!(
                    "clips {t}×{h}×{w} are not divisible by the patch size {:?}",
                    cfg.patch_size()
                ),
            ));
        }
        if let Some(image) = self.apt.as_ref().and_then(|a| a.image.as_ref()) {
            if image.frames as i64 % pt != 0 {
                return Err(config_error(
                    "apt.image.frames",
                    format!(
                        "must be a multiple of the temporal patch {pt}, got {}",
                        image.frames
                    ),
                ));
            }
        }
        match cfg {
            ModelConfig::Mmdit(m) => {
                if m.context_dim as i64 != MINILM_WIDTH || m.pooled_dim as i64 != MINILM_WIDTH {
                    return Err(config_error(
                        "model",
                        format!(
                            "context_dim and pooled_dim must be {MINILM_WIDTH} (MiniLM), got {} \
                             and {}",
                            m.context_dim, m.pooled_dim
                        ),
                    ));
                }
            }
            ModelConfig::Wan(wan) => {
                let Some(dir) = self.wan_pipeline()? else {
                    return Err(config_error(
                        "model.from",
                        "missing: a Wan model takes its text encoder, tokenizer and VAE from \
                         its pipeline directory",
                    ));
                };
                let width = dir.text_width()?;
                if width != wan.text_dim {
                    return Err(config_error(
                        "model.from",
                        format!(
                            "the text encoder's tokens are {width} wide ({}) but the \
                             transformer takes text_dim = {}",
                            dir.text_encoder().join("config.json").display(),
                            wan.text_dim
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
