//! Model configuration: sizes, positions, attention backend, presets, TOML and diffusers JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{config_error, MmditError, Result};

/// How token positions enter the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Positions {
    /// 3D rotary embedding over (frame, row, column) patch indices, applied to the visual
    /// queries and keys of every block (text tokens are not rotated). Adjacent channel pairs
    /// rotate together, as in diffusers' HunyuanVideo and Wan.
    Rope3d {
        /// Frequency base.
        #[serde(default = "default_rope_theta")]
        theta: f64,
        /// Head channels given to the (t, h, w) axes; each even, summing to `head_dim`.
        /// Default: Wan's split, `h = w = 2·(head_dim / 6)`, `t` the rest.
        #[serde(default)]
        axes_dim: Option<[usize; 3]>,
    },
    /// SD3's fixed (not learned) 2D sin-cos table of `max_size²` positions (stored in the
    /// weights as `pos_embed.pos_embed`), centre-cropped to the input's patch grid and added to
    /// the patch tokens. Every frame gets the same table, so this is meant for images (T = 1).
    Sincos2d {
        /// Table side, in patches (diffusers' `pos_embed_max_size`).
        max_size: usize,
        /// Grid size the table's coordinates are scaled to (diffusers' `sample_size / patch_size`).
        base_size: usize,
    },
}

fn default_rope_theta() -> f64 {
    10_000.0
}

/// Which attention kernel the joint attention uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionBackend {
    /// `scaled_dot_product_attention` (fused kernels; no double backward).
    #[default]
    Sdpa,
    /// Explicit `softmax(q kᵀ / √d) v`: slower, but supports double backward (exact R1).
    Math,
}

/// What the network's output means (diffusers' `prediction_type`). The architecture is the same
/// either way; `apt_flow` turns the output into the velocity every sampler and loss uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// The rectified-flow velocity `v = ε − x0` (SD3, diffusers' `flow_prediction`).
    #[default]
    Velocity,
    /// The clean sample `x0` ("x-prediction", JiT: Li & He 2025, arXiv 2511.13720), for
    /// pixel-space models whose patches are large: the velocity is `(x_t − x̂0) / t`.
    Sample,
}

/// The full description of an MMDiT. Field names follow the paper; [`MmditConfig::from_diffusers_json`]
/// maps diffusers' `SD3Transformer2DModel` config onto them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmditConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out (the velocity prediction; usually `in_channels`).
    pub out_channels: usize,
    /// 3D patch size `(pt, ph, pw)`.
    pub patch_size: [usize; 3],
    /// Number of joint blocks (the last one is context-pre-only).
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Channels per head; the model width is `num_heads · head_dim`.
    pub head_dim: usize,
    /// MLP hidden width as a multiple of the model width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    /// Width of the text tokens fed in (diffusers' `joint_attention_dim`).
    pub context_dim: usize,
    /// Width of the pooled text vector (diffusers' `pooled_projection_dim`).
    pub pooled_dim: usize,
    /// RMSNorm on per-head queries and keys (diffusers' `qk_norm = "rms_norm"`).
    #[serde(default)]
    pub qk_norm: bool,
    /// Position encoding.
    pub positions: Positions,
    /// Attention kernel.
    #[serde(default)]
    pub attention: AttentionBackend,
    /// What the output predicts (default: the velocity).
    #[serde(default)]
    pub prediction: Prediction,
}

fn default_mlp_ratio() -> usize {
    4
}

impl MmditConfig {
    /// Model width `num_heads · head_dim`.
    pub fn hidden_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Input channels of one patch, `in_channels · pt · ph · pw`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.patch_size.iter().product::<usize>()
    }

    /// Output channels of one patch token, `out_channels · pt · ph · pw`.
    pub fn patch_out_dim(&self) -> usize {
        self.out_channels * self.patch_size.iter().product::<usize>()
    }

    /// The RoPE channel split per axis, if positions are rotary.
    pub fn rope_axes_dim(&self) -> Option<[usize; 3]> {
        match &self.positions {
            Positions::Rope3d {
                axes_dim: Some(axes),
                ..
            } => Some(*axes),
            Positions::Rope3d { axes_dim: None, .. } => {
                let hw = 2 * (self.head_dim / 6);
                Some([self.head_dim - 2 * hw, hw, hw])
            }
            Positions::Sincos2d { .. } => None,
        }
    }

    /// Parses a TOML document (unknown keys are errors) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| config_error("(toml)", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| MmditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| MmditError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as a TOML document.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("MmditConfig always serialises")
    }

    /// Checks every value; the error names the key and what was expected.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("mlp_ratio", self.mlp_ratio),
            ("context_dim", self.context_dim),
            ("pooled_dim", self.pooled_dim),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(config_error(key, "must be at least 1"));
            }
        }
        if self.patch_size.contains(&0) {
            return Err(config_error(
                "patch_size",
                "must be three positive sizes [pt, ph, pw]",
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(config_error(
                "head_dim",
                format!("must be even, got {}", self.head_dim),
            ));
        }
        match &self.positions {
            Positions::Rope3d { theta, axes_dim } => {
                if !(theta.is_finite() && *theta > 1.0) {
                    return Err(config_error(
                        "positions.theta",
                        format!("must be > 1, got {theta}"),
                    ));
                }
                let axes = axes_dim.unwrap_or_else(|| self.rope_axes_dim().expect("rope"));
                if axes.iter().any(|d| d % 2 != 0) || axes.iter().sum::<usize>() != self.head_dim {
                    return Err(config_error(
                        "positions.axes_dim",
                        format!(
                            "must be three even sizes summing to head_dim = {}, got {axes:?}",
                            self.head_dim
                        ),
                    ));
                }
            }
            Positions::Sincos2d {
                max_size,
                base_size,
            } => {
                if *max_size == 0 || *base_size == 0 {
                    return Err(config_error(
                        "positions",
                        "max_size and base_size must be at least 1",
                    ));
                }
                if !self.hidden_size().is_multiple_of(4) {
                    return Err(config_error(
                        "num_heads",
                        format!(
                            "sincos2d needs a width divisible by 4, got {}",
                            self.hidden_size()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Maps a diffusers `SD3Transformer2DModel` `config.json` onto this config (image patches
    /// `(1, p, p)`, sin-cos positions, SDPA). Dual-attention (SD3.5) configs are rejected.
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_error("(config.json)", e.to_string()))?;
        let int = |key: &str, default: usize| -> Result<usize> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| {
                    config_error(key, format!("must be a non-negative integer, got {x}"))
                }),
            }
        };
        // Defaults are SD3Transformer2DModel's own.
        let sample_size = int("sample_size", 128)?;
        let patch = int("patch_size", 2)?;
        let in_channels = int("in_channels", 16)?;
        let heads = int("num_attention_heads", 18)?;
        let head_dim = int("attention_head_dim", 64)?;
        let caption_dim = int("caption_projection_dim", 1152)?;
        if caption_dim != heads * head_dim {
            return Err(config_error(
                "caption_projection_dim",
                format!(
                    "must equal num_attention_heads · attention_head_dim = {} (the blocks need it)",
                    heads * head_dim
                ),
            ));
        }
        if let Some(layers) = v.get("dual_attention_layers").and_then(|x| x.as_array()) {
            if !layers.is_empty() {
                return Err(config_error(
                    "dual_attention_layers",
                    "must be empty: SD3.5 dual attention is not supported",
                ));
            }
        }
        let qk_norm = match v.get("qk_norm").and_then(|x| x.as_str()) {
            None => false,
            Some("rms_norm") => true,
            Some(other) => {
                return Err(config_error(
                    "qk_norm",
                    format!("must be null or \"rms_norm\", got {other:?}"),
                ))
            }
        };
        if patch == 0 {
            return Err(config_error("patch_size", "must be at least 1"));
        }
        let max_size = match v.get("pos_embed_max_size") {
            Some(serde_json::Value::Null) => {
                return Err(config_error(
                    "pos_embed_max_size",
                    "must be set (SD3's cropped position table)",
                ))
            }
            _ => int("pos_embed_max_size", 96)?,
        };
        let cfg = Self {
            in_channels,
            out_channels: match v.get("out_channels") {
                None | Some(serde_json::Value::Null) => in_channels,
                Some(_) => int("out_channels", in_channels)?,
            },
            patch_size: [1, patch, patch],
            depth: int("num_layers", 18)?,
            num_heads: heads,
            head_dim,
            mlp_ratio: 4,
            context_dim: int("joint_attention_dim", 4096)?,
            pooled_dim: int("pooled_projection_dim", 2048)?,
            qk_norm,
            positions: Positions::Sincos2d {
                max_size,
                base_size: sample_size / patch,
            },
            attention: AttentionBackend::Sdpa,
            prediction: Prediction::Velocity,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
