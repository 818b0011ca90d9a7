//! `WanConfig`: the Wan 2.1 text-to-video transformer's sizes, with diffusers'
//! `WanTransformer3DModel` names (a `config.json` reads into it as is), the released presets,
//! the checks, and closed-form parameter counts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{config_error, MmditError, Result};

/// diffusers' class name of the model (`config.json`'s `_class_name`).
pub const WAN_CLASS_NAME: &str = "WanTransformer3DModel";

/// The only QK normalisation Wan 2.1 uses (diffusers applies RMSNorm over all heads' channels
/// at once whatever this key says).
pub const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// The Wan 2.1 transformer's config (diffusers' `WanTransformer3DModel` keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WanConfig {
    /// 3D patch `(pt, ph, pw)`; Wan 2.1: `(1, 2, 2)`.
    pub patch_size: [usize; 3],
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Channels per head; the width is `heads · head_dim`.
    pub attention_head_dim: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Width of the text encoder's tokens (UMT5-XXL: 4096).
    pub text_dim: usize,
    /// Sinusoidal timestep features.
    #[serde(default = "default_freq_dim")]
    pub freq_dim: usize,
    /// Hidden width of each block's feed-forward network.
    pub ffn_dim: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// LayerNorm (with affine) before cross-attention.
    #[serde(default = "yes")]
    pub cross_attn_norm: bool,
    /// QK normalisation: `"rms_norm_across_heads"` (or absent; diffusers normalises either way).
    #[serde(default)]
    pub qk_norm: Option<String>,
    /// Epsilon of every norm.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Image-embedding width of the image-to-video models (not supported: must be absent).
    #[serde(default)]
    pub image_dim: Option<usize>,
    /// Added key/value width of the image-to-video models (not supported: must be absent).
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    /// Positions per axis the rotary table covers.
    #[serde(default = "default_rope_max_seq_len")]
    pub rope_max_seq_len: usize,
    /// Wan 2.1 FLF2V's image position table (not supported: must be absent).
    #[serde(default)]
    pub pos_embed_seq_len: Option<usize>,
}

fn default_freq_dim() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_max_seq_len() -> usize {
    1024
}

impl WanConfig {
    /// Wan 2.1 T2V 1.3B: 30 blocks, 1536 wide (12 heads of 128), ffn 8960.
    pub fn wan21_1_3b() -> Self {
        Self::released(12, 8960, 30)
    }

    /// Wan 2.1 T2V 14B: 40 blocks, 5120 wide (40 heads of 128), ffn 13824.
    pub fn wan21_14b() -> Self {
        Self::released(40, 13824, 40)
    }

    fn released(heads: usize, ffn_dim: usize, num_layers: usize) -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_attention_heads: heads,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim,
            num_layers,
            cross_attn_norm: true,
            qk_norm: Some(QK_NORM_ACROSS_HEADS.into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }

    /// Model width `heads · head_dim`.
    pub fn hidden_size(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels of one patch token, `out_channels · pt · ph · pw`.
    pub fn patch_out_dim(&self) -> usize {
        self.out_channels * self.patch_size.iter().product::<usize>()
    }

    /// The rotary table's channels per axis `[t, h, w]`: `h = w = 2·(head_dim / 6)`, `t` the
    /// rest (diffusers' `WanRotaryPosEmbed`).
    pub fn rope_axes_dim(&self) -> [usize; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Parses a diffusers `config.json` (`_`-prefixed metadata skipped; another `_class_name`
    /// is an error) and validates it.
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| config_error("(config.json)", format!("not a JSON object: {e}")))?;
        if let Some(class) = json.get("_class_name").and_then(|c| c.as_str()) {
            if class != WAN_CLASS_NAME {
                return Err(config_error(
                    "_class_name",
                    format!("is {class:?}, expected {WAN_CLASS_NAME:?}"),
                ));
            }
        }
        json.retain(|k, _| !k.starts_with('_'));
        let cfg: Self = serde_json::from_value(serde_json::Value::Object(json))
            .map_err(|e| config_error("(config.json)", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `dir/config.json` (a diffusers `transformer/` directory).
    pub fn from_diffusers_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| MmditError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_diffusers_json(&text).map_err(|e| MmditError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// The config as diffusers writes it (with `_class_name`).
    pub fn to_diffusers_json(&self) -> String {
        let mut json = serde_json::to_value(self).expect("a config serialises");
        json.as_object_mut()
            .expect("an object")
            .insert("_class_name".into(), WAN_CLASS_NAME.into());
        serde_json::to_string_pretty(&json).expect("JSON serialises")
    }

    /// Forward FLOPs for one sample, counting 2 per multiply-add of every matmul (as
    /// [`crate::forward_flops`] does for the MMDiT): patch embedding, text and time embedders,
    /// per block self-attention over the `N` visual tokens, cross-attention to the
    /// `text_tokens`, the FFN, and the output projection. `input` is `[C, T, H, W]`.
    pub fn forward_flops(&self, input: [usize; 4], text_tokens: usize) -> u64 {
        let d = self.hidden_size() as u64;
        let [pt, ph, pw] = self.patch_size;
        let n = (input[1] / pt * (input[2] / ph) * (input[3] / pw)) as u64;
        let l = text_tokens as u64;
        let mm = |rows: u64, k: u64, cols: u64| 2 * rows * k * cols;
        let patch = (self.in_channels * pt * ph * pw) as u64;
        let embed = mm(n, patch, d)
            + mm(1, self.freq_dim as u64, d)
            + mm(1, d, d)
            + mm(1, d, 6 * d)
            + mm(l, self.text_dim as u64, d)
            + mm(l, d, d);
        let self_attention = mm(n, d, 3 * d) + 2 * mm(n, d, n) + mm(n, d, d);
        let cross_attention = mm(n, d, d) + mm(l, d, 2 * d) + 2 * mm(n, d, l) + mm(n, d, d);
        let ffn = mm(n, d, self.ffn_dim as u64) + mm(n, self.ffn_dim as u64, d);
        let blocks = self.num_layers as u64 * (self_attention + cross_attention + ffn);
        embed + blocks + mm(n, d, self.patch_out_dim() as u64)
    }

    /// Checks the sizes and that the config is a text-to-video Wan 2.1 model.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("text_dim", self.text_dim),
            ("ffn_dim", self.ffn_dim),
            ("num_layers", self.num_layers),
            ("rope_max_seq_len", self.rope_max_seq_len),
        ] {
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
        if self.freq_dim == 0 || !self.freq_dim.is_multiple_of(2) {
            return Err(config_error(
                "freq_dim",
                format!("must be a positive even number, got {}", self.freq_dim),
            ));
        }
        if self.attention_head_dim < 6 || !self.attention_head_dim.is_multiple_of(2) {
            return Err(config_error(
                "attention_head_dim",
                format!(
                    "must be even and at least 6 (three rotary axes), got {}",
                    self.attention_head_dim
                ),
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(config_error(
                "eps",
                format!("must be > 0, got {}", self.eps),
            ));
        }
        if let Some(norm) = &self.qk_norm {
            if norm != QK_NORM_ACROSS_HEADS {
                return Err(config_error(
                    "qk_norm",
                    format!("must be {QK_NORM_ACROSS_HEADS:?} (Wan 2.1's), got {norm:?}"),
                ));
            }
        }
        for (key, value) in [
            ("image_dim", self.image_dim),
            ("added_kv_proj_dim", self.added_kv_proj_dim),
            ("pos_embed_seq_len", self.pos_embed_seq_len),
        ] {
            if value.is_some() {
                return Err(config_error(
                    key,
                    "is set: that is an image-to-video Wan model; only text-to-video is \
                     supported",
                ));
            }
        }
        Ok(())
    }

    /// Trainable parameters, from the sizes alone (no model is built).
    pub fn parameter_count(&self) -> u64 {
        let linear = |i: usize, o: usize| (i * o + o) as u64;
        let d = self.hidden_size();
        let patch = self.in_channels * self.patch_size.iter().product::<usize>();
        let embeddings = (patch * d + d) as u64
            + linear(self.freq_dim, d)
            + linear(d, d)
            + linear(d, 6 * d)
            + linear(self.text_dim, d)
            + linear(d, d);
        let attention = 4 * linear(d, d) + 2 * d as u64;
        let block = 2 * attention
            + if self.cross_attn_norm {
                2 * d as u64
            } else {
                0
            }
            + linear(d, self.ffn_dim)
            + linear(self.ffn_dim, d)
            + 6 * d as u64;
        let head = linear(d, self.patch_out_dim()) + 2 * d as u64;
        embeddings + self.num_layers as u64 * block + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_released_sizes_count_as_diffusers_does() {
        // diffusers' WanTransformer3DModel built on the meta device.
        assert_eq!(WanConfig::wan21_1_3b().parameter_count(), 1_418_996_800);
        assert_eq!(WanConfig::wan21_14b().parameter_count(), 14_288_491_584);
        assert_eq!(WanConfig::wan21_1_3b().rope_axes_dim(), [44, 42, 42]);
    }

    #[test]
    fn a_diffusers_config_round_trips_and_image_models_are_refused() {
        let cfg = WanConfig::wan21_14b();
        let back = WanConfig::from_diffusers_json(&cfg.to_diffusers_json()).unwrap();
        assert_eq!(back, cfg);
        let i2v = cfg
            .to_diffusers_json()
            .replace("\"image_dim\": null", "\"image_dim\": 1280");
        let e = WanConfig::from_diffusers_json(&i2v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_dim") && e.contains("text-to-video"),
            "{e}"
        );
        let other = cfg
            .to_diffusers_json()
            .replace(WAN_CLASS_NAME, "SD3Transformer2DModel");
        assert!(WanConfig::from_diffusers_json(&other)
            .unwrap_err()
            .to_string()
            .contains("_class_name"));
    }

    #[test]
    fn forward_flops_are_two_per_weight_and_token_plus_self_attention() {
        // The 1.3B at 480×832×81: N = 32,760 visual tokens, 512 text tokens. Every weight of
        // the blocks multiplies each visual token once (2 FLOPs; the cross-attention's K/V
        // weights the text tokens instead), and self-attention adds 4·N²·D per block.
        let cfg = WanConfig::wan21_1_3b();
        let (n, l, d) = (32_760f64, 512f64, 1536f64);
        let per_block_weights = (cfg.parameter_count() as f64 - 2.6e7) / 30.0; // less the rest
        let kv = 2.0 * d * d;
        let expected = 30.0
            * (2.0 * (per_block_weights - kv) * n
                + 2.0 * kv * l
                + 4.0 * n * n * d
                + 4.0 * n * l * d);
        let counted = cfg.forward_flops([16, 21, 60, 104], 512) as f64;
        assert!(
            (counted / expected - 1.0).abs() < 0.01,
            "{counted:e} vs {expected:e}"
        );
    }
}
