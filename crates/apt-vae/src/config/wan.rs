//! [`WanVaeConfig`]: diffusers' `AutoencoderKLWan` (Wan 2.1), with the `wan21()` and `small()`
//! presets and validation that names the key.

use serde::{Deserialize, Serialize};

use super::{check_positive, config_error, parse_diffusers_json};
use crate::error::Result;

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
    /// 16 base channels, 4× time, 4× space, 8 latent channels, unit latent statistics (the stage
    /// that trains it measures and writes its own).
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
        let cfg: Self = parse_diffusers_json(text)?;
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

    /// Checks every value (and the features this implementation does not have); the first
    /// problem found is returned, naming its key.
    pub fn validate(&self) -> Result<()> {
        self.check_sizes()?;
        self.check_stages()?;
        self.check_unsupported_features()?;
        self.check_latent_statistics()?;
        self.check_dropout()?;
        self.check_declared_ratios()
    }

    /// Channel counts and depth are positive.
    fn check_sizes(&self) -> Result<()> {
        check_positive("base_dim", self.base_dim)?;
        check_positive("decoder_base_dim", self.decoder_dim())?;
        check_positive("z_dim", self.z_dim)?;
        check_positive("num_res_blocks", self.num_res_blocks)?;
        check_positive("in_channels", self.in_channels)?;
        check_positive("out_channels", self.out_channels)
    }

    /// At least two positive stage multipliers, one time flag per down stage, and decoder stage
    /// channels the upsamplers can halve.
    fn check_stages(&self) -> Result<()> {
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
        Ok(())
    }

    /// Down-stage attention and Wan 2.2's residual and patchified variants are not implemented.
    fn check_unsupported_features(&self) -> Result<()> {
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
        Ok(())
    }

    /// One latent mean and one positive standard deviation per latent channel.
    fn check_latent_statistics(&self) -> Result<()> {
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
        Ok(())
    }

    /// Dropout is not implemented, so it must be 0.
    fn check_dropout(&self) -> Result<()> {
        if self.dropout != 0.0 {
            return Err(config_error(
                "dropout",
                format!(
                    "must be 0 (got {}): dropout is not implemented",
                    self.dropout
                ),
            ));
        }
        Ok(())
    }

    /// `scale_factor_temporal` / `scale_factor_spatial`, when given, match the stages.
    fn check_declared_ratios(&self) -> Result<()> {
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
    }

    #[test]
    fn diffusers_json_skips_metadata_and_names_unknown_keys() {
        let ok = r#"{"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1", "base_dim": 96}"#;
        assert_eq!(WanVaeConfig::from_diffusers_json(ok).unwrap().base_dim, 96);
        let err = WanVaeConfig::from_diffusers_json(r#"{"base_dimm": 96}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_dimm"), "{err}");
        let err = WanVaeConfig::from_diffusers_json(r#"{"is_residual": true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is_residual") && err.contains("2.2"), "{err}");
    }
}
