//! Built-in model presets, from unit-test size to the APT paper's 8B video model.

use crate::config::{AttentionBackend, MmditConfig, Positions, Prediction};
use crate::error::{MmditError, Result};

/// A named configuration plus the input it is typically run on (for size and FLOP estimates,
/// see [`crate::forward_flops`]).
#[derive(Debug, Clone)]
pub struct Preset {
    /// Preset name (`tiny`, `small`, `sd3-medium`, `seaweed-8b`).
    pub name: &'static str,
    /// What it is for.
    pub summary: &'static str,
    /// The model.
    pub config: MmditConfig,
    /// A typical latent shape `[C, T, H, W]`.
    pub typical_input: [usize; 4],
    /// A typical number of text tokens.
    pub typical_text_tokens: usize,
}

impl Preset {
    /// Every built-in preset.
    pub fn all() -> Vec<Preset> {
        let rope = Positions::Rope3d {
            theta: 10_000.0,
            axes_dim: None,
        };
        vec![
            Preset {
                name: "tiny",
                summary: "unit tests (< 1M parameters)",
                config: MmditConfig {
                    in_channels: 4,
                    out_channels: 4,
                    patch_size: [1, 2, 2],
                    depth: 3,
                    num_heads: 2,
                    head_dim: 16,
                    mlp_ratio: 4,
                    context_dim: 32,
                    pooled_dim: 32,
                    qk_norm: true,
                    positions: rope.clone(),
                    attention: AttentionBackend::Sdpa,
                    prediction: Prediction::Velocity,
                },
                typical_input: [4, 4, 8, 8],
                typical_text_tokens: 8,
            },
            Preset {
                name: "small",
                summary: "CPU demos on RGB clips with MiniLM text (384-wide)",
                config: MmditConfig {
                    in_channels: 3,
                    out_channels: 3,
                    patch_size: [2, 4, 4],
                    depth: 6,
                    num_heads: 3,
                    head_dim: 64,
                    mlp_ratio: 4,
                    context_dim: 384,
                    pooled_dim: 384,
                    qk_norm: true,
                    positions: rope.clone(),
                    attention: AttentionBackend::Sdpa,
                    prediction: Prediction::Velocity,
                },
                typical_input: [3, 8, 32, 32],
                typical_text_tokens: 16,
            },
            Preset {
                name: "sd3-medium",
                summary: "Stable Diffusion 3 Medium's transformer (24 blocks, 1536 wide)",
                config: MmditConfig {
                    in_channels: 16,
                    out_channels: 16,
                    patch_size: [1, 2, 2],
                    depth: 24,
                    num_heads: 24,
                    head_dim: 64,
                    mlp_ratio: 4,
                    context_dim: 4096,
                    pooled_dim: 2048,
                    qk_norm: false,
                    positions: Positions::Sincos2d {
                        max_size: 192,
                        base_size: 64,
                    },
                    attention: AttentionBackend::Sdpa,
                    prediction: Prediction::Velocity,
                },
                typical_input: [16, 1, 128, 128],
                typical_text_tokens: 333,
            },
            Preset {
                name: "seaweed-8b",
                summary: "the paper's 36-block, ~8B-parameter video MMDiT (3D RoPE, QK-norm)",
                config: MmditConfig {
                    in_channels: 16,
                    out_channels: 16,
                    patch_size: [1, 2, 2],
                    depth: 36,
                    num_heads: 26,
                    head_dim: 96,
                    mlp_ratio: 4,
                    context_dim: 4096,
                    pooled_dim: 2048,
                    qk_norm: true,
                    positions: rope,
                    attention: AttentionBackend::Sdpa,
                    prediction: Prediction::Velocity,
                },
                // 2 s of 1280×720 at 24 fps (49 frames) through a 4×8×8 VAE.
                typical_input: [16, 13, 90, 160],
                typical_text_tokens: 256,
            },
        ]
    }

    /// The preset called `name`.
    pub fn named(name: &str) -> Result<Preset> {
        Self::all()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| MmditError::UnknownPreset {
                name: name.to_string(),
                known: MmditConfig::PRESETS.join(", "),
            })
    }
}

impl MmditConfig {
    /// Names of the built-in presets.
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "sd3-medium", "seaweed-8b"];

    /// The built-in preset `name` (see [`Preset`]).
    pub fn preset(name: &str) -> Result<Self> {
        Ok(Preset::named(name)?.config)
    }
}
