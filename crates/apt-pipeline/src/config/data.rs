//! `[data]`: where a run's training clips come from (the moving-shapes benchmark, a folder or
//! manifest of files, or stored VAE latents), with its checks. The stream itself is
//! [`crate::data::TrainData`].

use apt_data::shapes::ShapesConfig;
use apt_data::{ClipSpec, OnBadSample};
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// The `[data]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// Moving shapes, rendered on the fly.
    Shapes {
        /// The benchmark's config (frames, size, shapes, speeds, held-out pairs).
        shapes: ShapesConfig,
        /// Data-set seed (training uses split `train`).
        #[serde(default)]
        seed: u64,
    },
    /// A folder with caption sidecars or a JSONL manifest.
    Files {
        /// Folder or manifest path.
        path: std::path::PathBuf,
        /// Clip to cut (frames, stride/fps, size; random offset and crop for training).
        clip: ClipSpec,
        /// Decoding threads.
        #[serde(default = "default_workers")]
        workers: usize,
        /// What to do with unreadable files.
        #[serde(default)]
        on_bad_sample: OnBadSample,
    },
    /// VAE latents written by `apt data encode` (its `manifest.jsonl`), for a run with `[vae]`
    /// (the same VAE): no decoding, only the normalisation.
    Latents {
        /// The manifest.
        path: std::path::PathBuf,
        /// Latent shape `[C, T, H, W]` to train on (T latent frames cut at random from each
        /// file; C, H, W as stored).
        shape: [usize; 4],
        /// Reading threads.
        #[serde(default = "default_workers")]
        workers: usize,
        /// What to do with unreadable files.
        #[serde(default)]
        on_bad_sample: OnBadSample,
    },
}

fn default_workers() -> usize {
    2
}

impl DataConfig {
    /// Checks the values (the files themselves are opened when a stage starts).
    pub fn validate(&self) -> Result<()> {
        match self {
            DataConfig::Shapes { shapes, .. } => Ok(shapes.validate()?),
            DataConfig::Files { clip, workers, .. } => {
                if *workers == 0 {
                    return Err(config_error("data.workers", "must be at least 1"));
                }
                Ok(clip.validate()?)
            }
            DataConfig::Latents { shape, workers, .. } => {
                if *workers == 0 {
                    return Err(config_error("data.workers", "must be at least 1"));
                }
                if shape.contains(&0) {
                    return Err(config_error(
                        "data.shape",
                        format!("must be four positive sizes [C, T, H, W], got {shape:?}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// True when the batches are already latents (`kind = "latents"`).
    pub fn is_latent(&self) -> bool {
        matches!(self, DataConfig::Latents { .. })
    }

    /// The clip shape `[C, T, H, W]` this source yields.
    pub fn clip_shape(&self) -> [i64; 4] {
        match self {
            DataConfig::Shapes { shapes, .. } => [
                3,
                shapes.frames as i64,
                shapes.height as i64,
                shapes.width as i64,
            ],
            DataConfig::Files { clip, .. } => [
                3,
                clip.num_frames as i64,
                clip.height as i64,
                clip.width as i64,
            ],
            DataConfig::Latents { shape, .. } => shape.map(|v| v as i64),
        }
    }

    /// The same source with `frames` frames per clip (the APT image stage).
    pub fn with_frames(&self, frames: usize) -> Self {
        let mut data = self.clone();
        match &mut data {
            DataConfig::Shapes { shapes, .. } => shapes.frames = frames,
            DataConfig::Files { clip, .. } => clip.num_frames = frames,
            DataConfig::Latents { shape, .. } => shape[1] = frames,
        }
        data
    }

    /// The moving-shapes benchmark, when that is the data.
    pub fn shapes(&self) -> Option<&ShapesConfig> {
        match self {
            DataConfig::Shapes { shapes, .. } => Some(shapes),
            DataConfig::Files { .. } | DataConfig::Latents { .. } => None,
        }
    }
}
