//! [`ImageVaeConfig`]: diffusers' `AutoencoderKL` as SD3 and FLUX use it, with the `sd3()` and
//! `flux()` presets and validation that names the key.

use serde::{Deserialize, Serialize};

use super::{check_positive, config_error, parse_diffusers_json};
use crate::error::Result;

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
        let cfg: Self = parse_diffusers_json(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pixels per latent cell along height and width.
    pub fn spatial_ratio(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Checks every value (and the features this implementation does not have); the first
    /// problem found is returned, naming its key.
    pub fn validate(&self) -> Result<()> {
        self.check_block_types()?;
        self.check_act_fn()?;
        self.check_norm_groups()?;
        self.check_sizes()?;
        self.check_scaling_factor()
    }

    /// At least one stage, and one `DownEncoderBlock2D` / `UpDecoderBlock2D` per stage.
    fn check_block_types(&self) -> Result<()> {
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
        Ok(())
    }

    /// SiLU is the only activation implemented.
    fn check_act_fn(&self) -> Result<()> {
        if self.act_fn != "silu" {
            return Err(config_error(
                "act_fn",
                format!("\"{}\" is not supported (expected \"silu\")", self.act_fn),
            ));
        }
        Ok(())
    }

    /// A positive group count that divides every stage's channels.
    fn check_norm_groups(&self) -> Result<()> {
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
        Ok(())
    }

    /// Channel counts and depth are positive.
    fn check_sizes(&self) -> Result<()> {
        check_positive("in_channels", self.in_channels)?;
        check_positive("out_channels", self.out_channels)?;
        check_positive("latent_channels", self.latent_channels)?;
        check_positive("layers_per_block", self.layers_per_block)
    }

    /// The latent scale is a finite positive number.
    fn check_scaling_factor(&self) -> Result<()> {
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
        ImageVaeConfig::sd3().validate().unwrap();
        ImageVaeConfig::flux().validate().unwrap();
        assert_eq!(ImageVaeConfig::sd3().spatial_ratio(), 8);
        assert_eq!(ImageVaeConfig::flux().spatial_ratio(), 8);
    }

    #[test]
    fn diffusers_json_names_the_bad_key() {
        let err = ImageVaeConfig::from_diffusers_json(r#"{"norm_num_groups": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("block_out_channels"), "{err}");
        let ok = r#"{"_class_name": "AutoencoderKL", "scaling_factor": 0.3611}"#;
        assert_eq!(
            ImageVaeConfig::from_diffusers_json(ok)
                .unwrap()
                .scaling_factor,
            0.3611
        );
    }
}
