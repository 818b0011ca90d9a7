//! Pixel or latent space: where a run's models work. With `[vae]`, training clips are encoded
//! by a frozen video VAE into normalised latents (what the teacher, the student and APT's
//! networks see), and generated latents are decoded back to video for evaluation and sampling.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use apt_vae::{LatentNorm, WanVae, WanVaeConfig};

pub use crate::config::latent_shape_of;
use tch::{nn, Device, Tensor};

use crate::config::RunConfig;
use crate::error::{config_error, PipelineError, Result};
use crate::run_dir::{RunDir, Stage};

/// A frozen video VAE and the normalisation between its latents and the models'.
#[derive(Debug)]
pub struct LatentCodec {
    vae: WanVae,
    _vs: nn::VarStore,
    norm: LatentNorm,
    device: Device,
    dir: PathBuf,
}

fn vae_error(dir: &Path) -> impl FnOnce(apt_vae::VaeError) -> PipelineError + '_ {
    move |e| PipelineError::File {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    }
}

impl LatentCodec {
    /// Loads a diffusers `AutoencoderKLWan` directory onto `device`, frozen.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let vae = WanVae::from_diffusers_dir(&vs, dir).map_err(vae_error(dir))?;
        vs.freeze();
        let norm = vae.latent_norm();
        Ok(Self {
            vae,
            _vs: vs,
            norm,
            device,
            dir: dir.to_path_buf(),
        })
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VAE's configuration.
    pub fn config(&self) -> &WanVaeConfig {
        self.vae.config()
    }

    /// Pixel clips [B, 3, T, H, W] in [-1, 1] → normalised latents (posterior mean), on the
    /// VAE's device.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let dir = &self.dir;
        tch::no_grad(|| {
            let z = self
                .vae
                .encode(&video.to_device(self.device))
                .map_err(vae_error(dir))?
                .mean;
            Ok(self.norm.normalize(&z))
        })
    }

    /// Normalised latents → pixel clips in [-1, 1], on the VAE's device.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let dir = &self.dir;
        tch::no_grad(|| {
            let z = self.norm.denormalize(&latents.to_device(self.device));
            self.vae.decode(&z).map_err(vae_error(dir))
        })
    }
}

/// Where a run's models work.
#[derive(Debug, Clone)]
pub enum Space {
    /// On pixels directly.
    Pixels,
    /// On a VAE's normalised latents.
    Latent(Rc<LatentCodec>),
}

/// The directory of the VAE a run uses: `[vae] from`, else what its `vae` stage exported.
pub fn vae_dir(run: &RunConfig, dir: &RunDir) -> Option<PathBuf> {
    let section = run.vae.as_ref()?;
    Some(match section.import_from() {
        Some(from) => from.to_path_buf(),
        None => dir.stage(Stage::Vae),
    })
}

impl Space {
    /// The run's space: latent when it has `[vae]` (the VAE must exist by then: imported, or
    /// exported by the `vae` stage), else pixels.
    pub fn open(run: &RunConfig, dir: &RunDir) -> Result<Self> {
        let Some(vae) = vae_dir(run, dir) else {
            return Ok(Space::Pixels);
        };
        if !vae.join("config.json").is_file() {
            return Err(config_error(
                "vae",
                format!(
                    "{} holds no VAE yet: run the `vae` stage first (or set `vae.from`)",
                    vae.display()
                ),
            ));
        }
        Ok(Space::Latent(Rc::new(LatentCodec::load(
            &vae,
            run.device()?,
        )?)))
    }

    /// The shape `[C, T, H, W]` the models see for pixel clips of `pixels` = [3, T, H, W].
    pub fn model_shape(&self, pixels: [i64; 4]) -> [i64; 4] {
        match self {
            Space::Pixels => pixels,
            Space::Latent(codec) => codec.config().latent_shape(pixels[1], pixels[2], pixels[3]),
        }
    }

    /// Pixel clips → what the models see.
    pub fn from_pixels(&self, video: &Tensor) -> Result<Tensor> {
        match self {
            Space::Pixels => Ok(video.shallow_clone()),
            Space::Latent(codec) => codec.encode(video),
        }
    }

    /// Stored (unnormalised) VAE latents → what the models see.
    pub fn normalize(&self, latents: &Tensor) -> Result<Tensor> {
        match self {
            Space::Pixels => Err(config_error(
                "data.kind",
                "is \"latents\" but the run has no [vae] to normalise and decode them with",
            )),
            Space::Latent(codec) => Ok(codec.norm.normalize(&latents.to_device(codec.device))),
        }
    }

    /// What the models produce → pixel clips.
    pub fn to_pixels(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Space::Pixels => Ok(x.shallow_clone()),
            Space::Latent(codec) => codec.decode(x),
        }
    }

    /// A model's spatial patch in pixels (the periodicity metric's grid).
    pub fn pixel_patch(&self, patch: [usize; 2]) -> [usize; 2] {
        match self {
            Space::Pixels => patch,
            Space::Latent(codec) => {
                let s = codec.config().spatial_ratio() as usize;
                [patch[0] * s, patch[1] * s]
            }
        }
    }
}
