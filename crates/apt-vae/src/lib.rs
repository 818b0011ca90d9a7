//! # apt-vae
//!
//! The VAEs that put videos and images into the latent space a diffusion model trains in, on
//! libtorch via `tch`:
//!
//! - [`WanVae`]: the Wan 2.1 video VAE (diffusers' `AutoencoderKLWan`) — causal 3D
//!   convolutions, 4×8×8 compression, 16 channels, chunked encoding/decoding with a feature
//!   cache, tiled decoding;
//! - [`ImageVae`]: the SD3 / FLUX image VAE (diffusers' `AutoencoderKL`, 16 channels, scaling
//!   and shift factors).
//!
//! Both load diffusers `save_pretrained` directories exactly (unknown/missing keys are errors)
//! and are parity-tested against diffusers to 1e-4 in fp32. [`LatentNorm`] maps their latents
//! to what a diffusion model sees.
//!
//! ```no_run
//! use apt_vae::{WanVae, WanVaeConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let vae = WanVae::new(&vs.root(), &WanVaeConfig::small())?;        // or from_diffusers_dir
//! let video = Tensor::rand([1, 3, 9, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
//! let z = vae.encode(&video)?.mean;                                   // [1, 8, 3, 8, 8]
//! let model_latents = vae.latent_norm().normalize(&z);               // what the DiT trains on
//! let back = vae.decode(&vae.latent_norm().denormalize(&model_latents))?; // [1, 3, 9, 32, 32]
//! # Ok::<(), apt_vae::VaeError>(())
//! ```

#![warn(missing_docs)]

pub mod causal_conv;
pub mod config;
pub mod error;
pub mod image_vae;
pub mod latent;
pub mod parity;
pub mod tiling;
pub mod wan;
pub mod wan_blocks;
pub mod weights;

pub use config::{ImageVaeConfig, WanVaeConfig};
pub use error::{Result, VaeError};
pub use image_vae::ImageVae;
pub use latent::{LatentNorm, Posterior};
pub use tiling::Tiling;
pub use wan::{activation_values, init_temporal_identity, parameter_count, WanVae};
