//! The two VAE configurations, spelled as diffusers' `config.json` spells them, with presets and
//! validation that names the key.

use serde::{Deserialize, Serialize};

use crate::error::{Result, VaeError};

fn config_error(key: &str, message: impl Into<String>) -> VaeError {
    VaeError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses a diffusers `config.json`: keys starting with `_` (`_class_name`,
/// `_diffusers_version`, …) are metadata and skipped; any other key the struct does not know is
/// an error naming it.
fn from_diffusers_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| config_error("config.json", e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(config_error("config.json", "is not a JSON object"));
    };
    let map: serde_json::Map<String, serde_json::Value> = map
        .into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| config_error("config.json", e.to_string()))
}

/// The `_class_name` of a diffusers `config.json`, if any.
pub fn diffusers_class_name(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("_class_name")?.as_str().map(str::to_owned)
}

/// diffusers' `AutoencoderKLWan` (Wan 2.1): causal 3D convolutions, RMS norms, per-frame
/// attention in the middle blocks. Defaults are Wan 2.1's released VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WanVaeConfig {
    /// Encoder channels of the first stage (decoder too unless `decoder_base_dim`).
    pub base_dim: i64,
    /// Decoder base channels, when they differ from the encoder's.
    pub decoder_base_dim: Option<i64>,
    /// Latent channels.
    pub z_dim: i64,
    /// Channel multiplier per stage; every stage but the last halves height and width.
    pub dim_mult: Vec<i64>,
    /// Residual blocks per encoder stage (the decoder has one more).
    pub num_res_blocks: i64,
    /// Scales with attention in the encoder's down stages (Wan 2.1: none; not supported).
    pub attn_scales: Vec<f64>,
    /// Per down stage (all but the last): whether it also halves time (diffusers' spelling).
    pub temperal_downsample: Vec<bool>,
    /// Dropout inside the residual blocks (must be 0: not implemented; Wan 2.1 uses none).
    pub dropout: f64,
    /// Per-channel latent mean, for [`crate::LatentNorm`].
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation, for [`crate::LatentNorm`].
    pub latents_std: Vec<f64>,
    /// Wan 2.2's residual down/up blocks (not supported).
    pub is_residual: bool,
    /// Pixel channels in.
    pub in_channels: i64,
    /// Pixel channels out.
    pub out_channels: i64,
    /// Wan 2.2's pixel patchification (not supported).
    pub patch_size: Option<i64>,
    /// Declared time compression (checked against `temperal_downsample`).
    pub scale_factor_temporal: Option<i64>,
    /// Declared space compression (checked against `dim_mult`).
    pub scale_factor_spatial: Option<i64>,
}

impl Default for WanVaeConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

impl WanVaeConfig {
    /// Wan 2.1's VAE (`Wan-AI/Wan2.1-T2V-*-Diffusers/vae`): 4×8×8 compression, 16 channels.
    pub fn wan21() -> Self {
        Self::default()
    }

    /// A small trainable video VAE of the same architecture for this repository's demos:
    /// 16 base channels, 4× time, 4× space, 8 latent channels, unit latent statistics (the stage that trains it
    /// measures and writes its own).
    pub fn small() -> Self {
        Self {
            base_dim: 16,
            z_dim: 8,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true, true],
            latents_mean: vec![0.0; 8],
            latents_std: vec![1.0; 8],
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(4),
            ..Self::default()
        }
    }

    /// Parses diffusers' `config.json` text and validates it.
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let cfg: Self = from_diffusers_json(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The decoder's base channels.
    pub fn decoder_dim(&self) -> i64 {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Pixels per latent cell along height and width: 2^(stages − 1).
    pub fn spatial_ratio(&self) -> i64 {
        1 << (self.dim_mult.len() - 1)
    }

    /// Frames per latent frame after the first: 2^(temporal down stages).
    pub fn temporal_ratio(&self) -> i64 {
        1 << self.temperal_downsample.iter().filter(|d| **d).count()
    }

    /// Latent shape `[C, T', H', W']` of a `[3, T, H, W]` video (T = 1 + ratio·k).
    pub fn latent_shape(&self, frames: i64, height: i64, width: i64) -> [i64; 4] {
        let s = self.spatial_ratio();
        [
            self.z_dim,
            1 + (frames - 1) / self.temporal_ratio(),
            height / s,
            width / s,
        ]
    }

    /// Checks every value (and the features this implementation does not have).
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, v: i64| {
            if v <= 0 {
                Err(config_error(key, format!("must be positive (got {v})")))
            } else {
                Ok(())
            }
        };
        positive("base_dim", self.base_dim)?;
        positive("decoder_base_dim", self.decoder_dim())?;
        positive("z_dim", self.z_dim)?;
        positive("num_res_blocks", self.num_res_blocks)?;
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        if self.dim_mult.len() < 2 || self.dim_mult.iter().any(|m| *m <= 0) {
            return Err(config_error(
                "dim_mult",
                format!(
                    "must hold at least two positive multipliers (got {:?})",
                    self.dim_mult
                ),
            ));
        }
        if self.temperal_downsample.len() != self.dim_mult.len() - 1 {
            return Err(config_error(
                "temperal_downsample",
                format!(
                    "needs one flag per down stage, {} for dim_mult {:?} (got {:?})",
                    self.dim_mult.len() - 1,
                    self.dim_mult,
                    self.temperal_downsample
                ),
            ));
        }
        // Upsampling halves the channels of every up stage but the first (Wan 2.1's layout).
        for (i, m) in self.dim_mult.iter().enumerate() {
            if (self.decoder_dim() * m) % 2 != 0 && i + 1 < self.dim_mult.len() {
                return Err(config_error(
                    "dim_mult",
                    "decoder stage channels must be even (the upsamplers halve them)",
                ));
            }
        }
        if !self.attn_scales.is_empty() {
            return Err(config_error(
                "attn_scales",
                "must be empty: attention in the down stages is not supported (Wan 2.1 has none, and diffusers cannot run it)",
            ));
        }
        if self.is_residual {
            return Err(config_error(
                "is_residual",
                "true is Wan 2.2's VAE, which is not supported (Wan 2.1 only)",
            ));
        }
        if let Some(p) = self.patch_size {
            return Err(config_error(
                "patch_size",
                format!("{p} is Wan 2.2's patchified VAE, which is not supported (expected null)"),
            ));
        }
        for (key, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if v.len() as i64 != self.z_dim {
                return Err(config_error(
                    key,
                    format!("needs z_dim = {} values (got {})", self.z_dim, v.len()),
                ));
            }
        }
        if self.latents_std.iter().any(|s| *s <= 0.0) {
            return Err(config_error("latents_std", "values must be positive"));
        }
        if self.dropout != 0.0 {
            return Err(config_error(
                "dropout",
                format!(
                    "must be 0 (got {}): dropout is not implemented",
                    self.dropout
                ),
            ));
        }
        if let Some(t) = self.scale_factor_temporal {
            if t != self.temporal_ratio() {
                return Err(config_error(
                    "scale_factor_temporal",
                    format!(
                        "is {t} but temperal_downsample {:?} compresses time {}×",
                        self.temperal_downsample,
                        self.temporal_ratio()
                    ),
                ));
            }
        }
        if let Some(s) = self.scale_factor_spatial {
            if s != self.spatial_ratio() {
                return Err(config_error(
                    "scale_factor_spatial",
                    format!(
                        "is {s} but dim_mult {:?} compresses space {}×",
                        self.dim_mult,
                        self.spatial_ratio()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// diffusers' `AutoencoderKL` as SD3 and FLUX use it (16 latent channels, scaling and shift
/// factors; SD1/SDXL's 4-channel ones load too). Defaults are SD3's released VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageVaeConfig {
    /// Pixel channels in.
    pub in_channels: i64,
    /// Pixel channels out.
    pub out_channels: i64,
    /// One `DownEncoderBlock2D` per stage.
    pub down_block_types: Vec<String>,
    /// One `UpDecoderBlock2D` per stage.
    pub up_block_types: Vec<String>,
    /// Channels per stage.
    pub block_out_channels: Vec<i64>,
    /// ResNet blocks per encoder stage (the decoder has one more).
    pub layers_per_block: i64,
    /// Activation (`silu` only).
    pub act_fn: String,
    /// Latent channels.
    pub latent_channels: i64,
    /// Groups of every GroupNorm.
    pub norm_num_groups: i64,
    /// Training resolution (used by diffusers' tiling only; kept for round trips).
    pub sample_size: serde_json::Value,
    /// Latent scale: the diffusion model sees `(z − shift) · scaling`.
    pub scaling_factor: f64,
    /// Latent shift (SD3, FLUX), or none (SD1/SDXL).
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (some pipelines; kept for round trips).
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std (some pipelines; kept for round trips).
    pub latents_std: Option<Vec<f64>>,
    /// diffusers' hint to run in fp32 (kept for round trips).
    pub force_upcast: bool,
    /// 1×1 convolution after the encoder (SD1/SDXL yes, SD3/FLUX no).
    pub use_quant_conv: bool,
    /// 1×1 convolution before the decoder.
    pub use_post_quant_conv: bool,
    /// Attention in the middle blocks.
    pub mid_block_add_attention: bool,
}

impl Default for ImageVaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 16,
            norm_num_groups: 32,
            sample_size: serde_json::json!(1024),
            scaling_factor: 1.5305,
            shift_factor: Some(0.0609),
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: false,
            use_post_quant_conv: false,
            mid_block_add_attention: true,
        }
    }
}

impl ImageVaeConfig {
    /// SD3's VAE (`stabilityai/stable-diffusion-3-medium-diffusers/vae`).
    pub fn sd3() -> Self {
        Self::default()
    }

    /// FLUX.1's VAE: SD3's architecture with its own scaling and shift.
    pub fn flux() -> Self {
        Self {
            scaling_factor: 0.3611,
            shift_factor: Some(0.1159),
            ..Self::default()
        }
    }

    /// Parses diffusers' `config.json` text and validates it.
    pub fn from_diffusers_json(text: &str) -> Result<Self> {
        let cfg: Self = from_diffusers_json(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pixels per latent cell along height and width.
    pub fn spatial_ratio(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Checks every value (and the features this implementation does not have).
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(config_error("block_out_channels", "must not be empty"));
        }
        for (key, types, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n || types.iter().any(|t| t != want) {
                return Err(config_error(
                    key,
                    format!("must be {n} × \"{want}\" (got {types:?})"),
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(config_error(
                "act_fn",
                format!("\"{}\" is not supported (expected \"silu\")", self.act_fn),
            ));
        }
        if self.norm_num_groups <= 0 {
            return Err(config_error("norm_num_groups", "must be positive"));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c <= 0 || *c % self.norm_num_groups != 0)
        {
            return Err(config_error(
                "block_out_channels",
                format!(
                    "{c} is not a positive multiple of norm_num_groups = {}",
                    self.norm_num_groups
                ),
            ));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if v <= 0 {
                return Err(config_error(key, format!("must be positive (got {v})")));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(config_error("scaling_factor", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_compress_as_documented() {
        let wan = WanVaeConfig::wan21();
        wan.validate().unwrap();
        assert_eq!((wan.temporal_ratio(), wan.spatial_ratio()), (4, 8));
        assert_eq!(wan.latent_shape(81, 480, 832), [16, 21, 60, 104]);
        let small = WanVaeConfig::small();
        small.validate().unwrap();
        assert_eq!((small.temporal_ratio(), small.spatial_ratio()), (4, 4));
        ImageVaeConfig::sd3().validate().unwrap();
        assert_eq!(ImageVaeConfig::flux().spatial_ratio(), 8);
    }

    #[test]
    fn diffusers_json_skips_metadata_and_names_unknown_keys() {
        let ok = r#"{"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1", "base_dim": 96}"#;
        assert_eq!(WanVaeConfig::from_diffusers_json(ok).unwrap().base_dim, 96);
        assert_eq!(
            diffusers_class_name(ok).as_deref(),
            Some("AutoencoderKLWan")
        );
        let err = WanVaeConfig::from_diffusers_json(r#"{"base_dimm": 96}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_dimm"), "{err}");
        let err = WanVaeConfig::from_diffusers_json(r#"{"is_residual": true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is_residual") && err.contains("2.2"), "{err}");
        let err = ImageVaeConfig::from_diffusers_json(r#"{"norm_num_groups": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("block_out_channels"), "{err}");
    }
}
