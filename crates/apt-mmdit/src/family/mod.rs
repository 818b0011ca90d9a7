//! The model families behind one interface: the SD3-style [`Mmdit`] and Wan 2.1's
//! [`WanTransformer`]. [`ModelConfig`] and [`Model`] are what the loop, the samplers, the
//! discriminator and the pipeline hold, so every stage has one code path for both.
//!
//! A `model.toml` of the MMDiT is [`MmditConfig`]'s TOML as it always was; a Wan model's
//! carries `family = "wan"` and diffusers' `WanTransformer3DModel` keys.

use std::path::Path;

use tch::nn;

use crate::config::{AttentionBackend, MmditConfig, Prediction};
use crate::error::{config_error, MmditError, Result};
use crate::model::Mmdit;
use crate::wan::config::WAN_CLASS_NAME;
use crate::wan::{WanConfig, WanTransformer};

/// The `family` value of a Wan 2.1 `model.toml`.
pub const WAN_FAMILY: &str = "wan";
/// The `family` value of an MMDiT `model.toml` (the default when the key is absent).
pub const MMDIT_FAMILY: &str = "mmdit";

/// A model of either family.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// The SD3-style MMDiT.
    Mmdit(MmditConfig),
    /// The Wan 2.1 text-to-video transformer.
    Wan(WanConfig),
}

impl From<MmditConfig> for ModelConfig {
    fn from(cfg: MmditConfig) -> Self {
        Self::Mmdit(cfg)
    }
}

impl From<WanConfig> for ModelConfig {
    fn from(cfg: WanConfig) -> Self {
        Self::Wan(cfg)
    }
}

/// Wan 2.1's preset names.
pub const WAN_PRESETS: [&str; 2] = ["wan2.1-1.3b", "wan2.1-14b"];

impl ModelConfig {
    /// A built-in preset of either family: the MMDiT's (`tiny`, `small`, `sd3-medium`,
    /// `seaweed-8b`) or Wan 2.1's released sizes (`wan2.1-1.3b`, `wan2.1-14b`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "wan2.1-1.3b" => Ok(Self::Wan(WanConfig::wan21_1_3b())),
            "wan2.1-14b" => Ok(Self::Wan(WanConfig::wan21_14b())),
            _ => crate::Preset::named(name)
                .map(|p| Self::Mmdit(p.config))
                .map_err(|_| MmditError::UnknownPreset {
                    name: name.to_string(),
                    known: MmditConfig::PRESETS
                        .iter()
                        .chain(&WAN_PRESETS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }

    /// `"mmdit"` or `"wan"`.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Mmdit(_) => MMDIT_FAMILY,
            Self::Wan(_) => WAN_FAMILY,
        }
    }

    /// The MMDiT config, if this is one.
    pub fn as_mmdit(&self) -> Option<&MmditConfig> {
        match self {
            Self::Mmdit(c) => Some(c),
            Self::Wan(_) => None,
        }
    }

    /// The Wan config, if this is one.
    pub fn as_wan(&self) -> Option<&WanConfig> {
        match self {
            Self::Wan(c) => Some(c),
            Self::Mmdit(_) => None,
        }
    }

    /// Transformer blocks (the discriminator's taps count them, 1-based).
    pub fn depth(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.depth,
            Self::Wan(c) => c.num_layers,
        }
    }

    /// Width of the visual tokens.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.hidden_size(),
            Self::Wan(c) => c.hidden_size(),
        }
    }

    /// Hidden width of each block's feed-forward network.
    pub fn ffn_width(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.mlp_ratio * c.hidden_size(),
            Self::Wan(c) => c.ffn_dim,
        }
    }

    /// Whether the text tokens join the visual ones in every block's attention (the MMDiT's
    /// joint attention) rather than being attended to (Wan's cross-attention).
    pub fn joint_text_tokens(&self) -> bool {
        matches!(self, Self::Mmdit(_))
    }

    /// Attention heads.
    pub fn num_heads(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.num_heads,
            Self::Wan(c) => c.num_attention_heads,
        }
    }

    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.head_dim,
            Self::Wan(c) => c.attention_head_dim,
        }
    }

    /// The attention kernel (Wan: PyTorch's fused kernel).
    pub fn attention(&self) -> AttentionBackend {
        match self {
            Self::Mmdit(c) => c.attention,
            Self::Wan(_) => AttentionBackend::Sdpa,
        }
    }

    /// Latent channels in.
    pub fn in_channels(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.in_channels,
            Self::Wan(c) => c.in_channels,
        }
    }

    /// Latent channels out.
    pub fn out_channels(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.out_channels,
            Self::Wan(c) => c.out_channels,
        }
    }

    /// The 3D patch `(pt, ph, pw)`.
    pub fn patch_size(&self) -> [usize; 3] {
        match self {
            Self::Mmdit(c) => c.patch_size,
            Self::Wan(c) => c.patch_size,
        }
    }

    /// Width of the text tokens the model takes.
    pub fn context_dim(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.context_dim,
            Self::Wan(c) => c.text_dim,
        }
    }

    /// Width of the pooled text vector the model takes (Wan: none, 0).
    pub fn pooled_dim(&self) -> usize {
        match self {
            Self::Mmdit(c) => c.pooled_dim,
            Self::Wan(_) => 0,
        }
    }

    /// What the output predicts (Wan: the velocity).
    pub fn prediction(&self) -> Prediction {
        match self {
            Self::Mmdit(c) => c.prediction,
            Self::Wan(_) => Prediction::Velocity,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Mmdit(c) => c.validate(),
            Self::Wan(c) => c.validate(),
        }
    }

    /// Trainable parameters (closed form).
    pub fn parameter_count(&self) -> u64 {
        match self {
            Self::Mmdit(c) => crate::param_count(c).total(),
            Self::Wan(c) => c.parameter_count(),
        }
    }

    /// The variable names (diffusers names, sorted) of a model of this config, read off a
    /// narrow model of the same structure (microseconds at any size).
    pub fn parameter_names(&self) -> Result<Vec<String>> {
        match self {
            Self::Mmdit(c) => Mmdit::parameter_names(c),
            Self::Wan(c) => WanTransformer::parameter_names(c),
        }
    }

    /// The linear layers `lora` adapts in a model of this config (diffusers names, sorted),
    /// found on a narrow model of the same structure; an error names a target that matches
    /// no linear layer.
    pub fn lora_modules(&self, lora: &crate::lora::LoraConfig) -> Result<Vec<String>> {
        let narrow = match self {
            Self::Mmdit(c) => Self::Mmdit(MmditConfig {
                num_heads: 2,
                head_dim: 6,
                mlp_ratio: 1,
                context_dim: 1,
                pooled_dim: 1,
                positions: match &c.positions {
                    crate::Positions::Rope3d { theta, .. } => crate::Positions::Rope3d {
                        theta: *theta,
                        axes_dim: None,
                    },
                    other => other.clone(),
                },
                ..c.clone()
            }),
            Self::Wan(c) => Self::Wan(WanConfig {
                num_attention_heads: 2,
                attention_head_dim: 6,
                text_dim: 1,
                freq_dim: 2,
                ffn_dim: 1,
                ..c.clone()
            }),
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let (_, modules) = crate::lora::with_lora(lora, || Model::new(vs.root(), &narrow))?;
        Ok(modules)
    }

    /// The config of a diffusers `transformer/` directory: its `config.json`'s `_class_name`
    /// picks the family (`WanTransformer3DModel` or `SD3Transformer2DModel`).
    pub fn from_diffusers_dir(dir: &Path) -> Result<Self> {
        if crate::parity::diffusers_class(dir)?.as_deref() == Some(WAN_CLASS_NAME) {
            Ok(Self::Wan(WanConfig::from_diffusers_dir(dir)?))
        } else {
            Ok(Self::Mmdit(crate::weights::read_diffusers_config(dir)?))
        }
    }

    /// Parses a `model.toml` (unknown keys are errors) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| config_error("(toml)", e.to_string()))?;
        let family = match table.remove("family") {
            None => MMDIT_FAMILY.to_string(),
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(config_error(
                    "family",
                    format!("must be \"{MMDIT_FAMILY}\" or \"{WAN_FAMILY}\", got {other}"),
                ))
            }
        };
        let cfg = match family.as_str() {
            MMDIT_FAMILY => Self::Mmdit(
                table
                    .try_into()
                    .map_err(|e: toml::de::Error| config_error("(toml)", e.to_string()))?,
            ),
            WAN_FAMILY => Self::Wan(
                table
                    .try_into()
                    .map_err(|e: toml::de::Error| config_error("(toml)", e.to_string()))?,
            ),
            other => {
                return Err(config_error(
                    "family",
                    format!("must be \"{MMDIT_FAMILY}\" or \"{WAN_FAMILY}\", got {other:?}"),
                ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a `model.toml`.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| MmditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| MmditError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The config as a `model.toml` (an MMDiT's without a `family` key, as before).
    pub fn to_toml_string(&self) -> String {
        match self {
            Self::Mmdit(c) => c.to_toml_string(),
            Self::Wan(c) => format!(
                "family = \"{WAN_FAMILY}\"\n{}",
                toml::to_string_pretty(c).expect("WanConfig serialises")
            ),
        }
    }
}

mod model;

pub use model::Model;
