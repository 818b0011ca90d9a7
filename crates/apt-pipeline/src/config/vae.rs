//! `[vae]`: train (or take) a video VAE and run every other stage in its latent space.

use std::path::{Path, PathBuf};

use apt_flow::train::TrainConfig;
use apt_vae::WanVaeConfig;
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// `[vae]`: with this section the teacher, the distilled student and APT's generator and
/// discriminator work on normalised VAE latents: training clips are encoded (posterior mean,
/// then [`apt_vae::LatentNorm`]), generated latents are decoded before evaluation and sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeSection {
    /// A diffusers `AutoencoderKLWan` directory to use, frozen, instead of training one (Wan
    /// 2.1's `vae/` folder, or a run's `vae/`). Relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// The architecture the `vae` stage trains: `small` (4×4×4, 8 channels) or `wan2.1`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// The first this many updates train on single frames (a random frame of each clip), as
    /// Wan trains its VAE on images before videos: about five times cheaper per update on
    /// 5-frame clips, and they teach the spatial layers; the rest train on whole clips.
    #[serde(default)]
    pub image_steps: u64,
    /// Weight of the KL term against the per-element L1 + L2 reconstruction loss.
    #[serde(default = "default_kl_weight")]
    pub kl_weight: f64,
    /// Training clips the per-channel latent mean and std are measured on after training.
    #[serde(default = "default_stats_clips")]
    pub stats_clips: usize,
    /// Held-out clips the reconstruction PSNR is measured on.
    #[serde(default = "default_val_clips")]
    pub val_clips: usize,
    /// The loop's knobs (required unless `from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainConfig>,
}

fn default_preset() -> String {
    "small".into()
}
fn default_kl_weight() -> f64 {
    1e-5
}
fn default_stats_clips() -> usize {
    256
}
fn default_val_clips() -> usize {
    64
}

impl VaeSection {
    /// A section that takes the VAE of `dir`, frozen (the other keys at their defaults).
    pub fn imported(dir: PathBuf) -> Self {
        Self {
            from: Some(dir),
            preset: default_preset(),
            image_steps: 0,
            kl_weight: default_kl_weight(),
            stats_clips: default_stats_clips(),
            val_clips: default_val_clips(),
            train: None,
        }
    }

    /// The VAE directory to use instead of training one (`from`, when non-empty).
    pub fn import_from(&self) -> Option<&Path> {
        self.from.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// The architecture: `from`'s `config.json`, else the preset.
    pub fn vae_config(&self) -> Result<WanVaeConfig> {
        if let Some(dir) = self.import_from() {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                config_error(
                    "vae.from",
                    format!(
                        "{}: {e} (expected a diffusers AutoencoderKLWan directory)",
                        path.display()
                    ),
                )
            })?;
            return WanVaeConfig::from_diffusers_json(&text)
                .map_err(|e| config_error("vae.from", format!("{}: {e}", path.display())));
        }
        match self.preset.as_str() {
            "small" => Ok(WanVaeConfig::small()),
            "wan2.1" => Ok(WanVaeConfig::wan21()),
            other => Err(config_error(
                "vae.preset",
                format!("unknown VAE preset {other:?} (expected \"small\" or \"wan2.1\")"),
            )),
        }
    }

    /// Checks the values (not `from`'s files: they are read when a stage starts).
    pub fn validate(&self) -> Result<()> {
        if self.import_from().is_none() {
            self.vae_config()?;
            let Some(train) = &self.train else {
                return Err(config_error(
                    "vae.train",
                    "missing: give the loop's knobs to train a VAE, or `from` to use one",
                ));
            };
            train.validate("vae.train")?;
            if self.image_steps > train.steps {
                return Err(config_error(
                    "vae.image_steps",
                    format!(
                        "is {} but vae.train.steps is {}",
                        self.image_steps, train.steps
                    ),
                ));
            }
        }
        if !(self.kl_weight.is_finite() && self.kl_weight >= 0.0) {
            return Err(config_error("vae.kl_weight", "must be finite and ≥ 0"));
        }
        if self.stats_clips == 0 {
            return Err(config_error("vae.stats_clips", "must be at least 1"));
        }
        Ok(())
    }
}

/// The latent shape `[C, T', H', W']` of pixel clips `[3, T, H, W]` under `vae`, or an error
/// naming `data` when the clips do not fit its compression (T = 1 + rk, H and W multiples).
pub fn latent_shape_of(vae: &WanVaeConfig, pixels: [i64; 4]) -> Result<[i64; 4]> {
    let [c, t, h, w] = pixels;
    let (r, s) = (vae.temporal_ratio(), vae.spatial_ratio());
    if c != vae.in_channels || t < 1 || (t - 1) % r != 0 || h % s != 0 || w % s != 0 {
        return Err(config_error(
            "data",
            format!(
                "clips {c}×{t}×{h}×{w} do not fit the VAE: it needs {} channels, 1 + {r}k frames \
                 and sides that are multiples of {s}",
                vae.in_channels
            ),
        ));
    }
    Ok(vae.latent_shape(t, h, w))
}

#[cfg(test)]
mod tests {
    use crate::config::RunConfig;

    const BASE: &str = r#"
out = "runs/t"
[model.config]
in_channels = 8
out_channels = 8
patch_size = [1, 2, 2]
depth = 1
num_heads = 1
head_dim = 16
mlp_ratio = 2
context_dim = 384
pooled_dim = 384
qk_norm = true
attention = "sdpa"
positions = { kind = "rope3d", theta = 10000.0 }
[data]
kind = "shapes"
shapes = { frames = 5, height = 32, width = 32 }
[vae]
preset = "small"
image_steps = 2
[vae.train]
steps = 4
batch_size = 2
optimizer = { kind = "adamw", lr = 1e-3 }
"#;

    fn err(overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::parse(BASE, &o)
            .and_then(|r| r.model_clip_shape())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_models_see_the_latent_shape() {
        let run = RunConfig::parse(BASE, &[]).unwrap();
        assert_eq!(run.model_clip_shape().unwrap(), [8, 2, 8, 8]);
        run.model().unwrap();
    }

    #[test]
    fn bad_vae_sections_name_their_key() {
        assert!(err(&["vae.preset=\"huge\""]).contains("vae.preset"));
        assert!(err(&["vae.image_steps=9"]).contains("vae.image_steps"));
        let no_train = err(&["vae={preset=\"small\"}"]);
        assert!(no_train.contains("vae.train"), "{no_train}");
        // 4 frames are not 1 + 4k: the data does not fit the VAE.
        let frames = err(&["data.shapes.frames=4"]);
        assert!(
            frames.contains("`data`") && frames.contains("1 + 4k"),
            "{frames}"
        );
        let missing = err(&["vae.from=\"/nonexistent/vae\""]);
        assert!(
            missing.contains("vae.from") && missing.contains("AutoencoderKLWan"),
            "{missing}"
        );
    }

    #[test]
    fn stored_latents_need_the_vae_and_its_channels() {
        let latents = "data={kind=\"latents\", path=\"m.jsonl\", shape=[8, 2, 8, 8]}";
        let run = RunConfig::parse(BASE, &[latents.to_string()]).unwrap();
        assert_eq!(run.model_clip_shape().unwrap(), [8, 2, 8, 8]);
        let wrong = err(&["data={kind=\"latents\", path=\"m.jsonl\", shape=[4, 2, 8, 8]}"]);
        assert!(wrong.contains("data.shape"), "{wrong}");
        let text = BASE.split("[vae]").next().unwrap();
        let no_vae = RunConfig::parse(text, &[latents.to_string()])
            .and_then(|r| r.model_clip_shape())
            .unwrap_err()
            .to_string();
        assert!(no_vae.contains("[vae]"), "{no_vae}");
    }
}
