//! The run configuration (TOML): one file describes the model, the data, the text encoder and
//! every stage. Unknown keys are errors naming the key.

use std::path::{Path, PathBuf};

use apt_mmdit::{MmditConfig, Preset};
use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::distill::{ConsistencyConfig, DistillConfig};
use crate::error::{config_error, FlowError, Result};
use crate::pretrain::PretrainConfig;

/// `[model]`: a preset name or a full model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A built-in preset (`tiny`, `small`, …).
    #[serde(default)]
    pub preset: Option<String>,
    /// A full config (instead of a preset).
    #[serde(default)]
    pub config: Option<MmditConfig>,
}

/// `[text]`: the frozen text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// Tokens per caption after padding/truncation.
    #[serde(default = "default_tokens")]
    pub tokens: usize,
    /// Caption-embedding cache (default: `<run>/text-cache`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_tokens() -> usize {
    16
}

impl Default for TextSection {
    fn default() -> Self {
        Self {
            tokens: default_tokens(),
            cache: None,
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory (`runs/NAME`).
    pub out: PathBuf,
    /// Seed of everything random.
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// libtorch intra-op threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The MMDiT.
    pub model: ModelSection,
    /// Training clips.
    pub data: DataConfig,
    /// Text conditioning.
    #[serde(default)]
    pub text: TextSection,
    /// Stage 1: rectified-flow pre-training of the teacher.
    #[serde(default)]
    pub pretrain: Option<PretrainConfig>,
    /// Stage 2a: deterministic distillation (teacher ODE pairs → one step).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Stage 2b: consistency distillation.
    #[serde(default)]
    pub consistency: Option<ConsistencyConfig>,
    /// Stage 3: adversarial post-training (parsed and checked by `apt-gan`).
    #[serde(default)]
    pub apt: Option<toml::Table>,
}

fn cpu() -> String {
    "cpu".into()
}

impl RunConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FlowError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| FlowError::File {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.model()?;
        cfg.device()?;
        Ok(cfg)
    }

    /// The model config, checked against the data and the text encoder (MiniLM: 384 wide).
    pub fn model(&self) -> Result<MmditConfig> {
        let cfg = match (&self.model.preset, &self.model.config) {
            (Some(name), None) => Preset::named(name)?.config,
            (None, Some(cfg)) => cfg.clone(),
            _ => {
                return Err(config_error(
                    "model",
                    "give exactly one of `preset` and `config`",
                ))
            }
        };
        cfg.validate()?;
        let [c, t, h, w] = crate::data::TrainData::clip_shape(&self.data);
        if cfg.in_channels as i64 != c || cfg.out_channels as i64 != c {
            return Err(config_error(
                "model",
                format!(
                    "takes {} → {} channels but the data has {c}",
                    cfg.in_channels, cfg.out_channels
                ),
            ));
        }
        let [pt, ph, pw] = cfg.patch_size.map(|p| p as i64);
        if t % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(config_error(
                "data",
                format!(
                    "clips {t}×{h}×{w} are not divisible by the patch size {:?}",
                    cfg.patch_size
                ),
            ));
        }
        if cfg.context_dim != 384 || cfg.pooled_dim != 384 {
            return Err(config_error(
                "model",
                format!(
                    "context_dim and pooled_dim must be 384 (MiniLM), got {} and {}",
                    cfg.context_dim, cfg.pooled_dim
                ),
            ));
        }
        Ok(cfg)
    }

    /// The device.
    pub fn device(&self) -> Result<tch::Device> {
        match self.device.as_str() {
            "cpu" => Ok(tch::Device::Cpu),
            "cuda" => Ok(tch::Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(i) => Ok(tch::Device::Cuda(i)),
                None => Err(config_error(
                    "device",
                    format!("must be cpu, cuda or cuda:N, got {other:?}"),
                )),
            },
        }
    }

    /// The caption-embedding cache directory.
    pub fn text_cache(&self) -> PathBuf {
        self.text
            .cache
            .clone()
            .unwrap_or_else(|| self.out.join("text-cache"))
    }
}
