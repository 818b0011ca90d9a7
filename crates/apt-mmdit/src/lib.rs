//! # apt-mmdit
//!
//! An SD3-style multimodal diffusion transformer (MMDiT) for video latents, on libtorch via
//! `tch`: 3D patches, two token streams (visual, text) with separate weights and one joint
//! attention, adaLN-Zero modulation from the timestep and pooled text, 3D RoPE or SD3's 2D
//! sin-cos positions, hidden-state taps for discriminators, and activation recomputation.
//! Weights use diffusers' `SD3Transformer2DModel` names and load from its directories
//! exactly (parity-tested to 1e-5).
//!
//! ```no_run
//! use apt_mmdit::{Mmdit, MmditConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let cfg = MmditConfig::preset("tiny")?;
//! let vs = nn::VarStore::new(Device::Cpu);
//! let model = Mmdit::new(vs.root(), &cfg)?;
//! let x = Tensor::randn([2, 4, 4, 8, 8], (Kind::Float, Device::Cpu)); // [B, C, T, H, W]
//! let t = Tensor::from_slice(&[0.3f32, 0.9]);                         // rectified-flow time
//! let text = Tensor::randn([2, 8, 32], (Kind::Float, Device::Cpu));   // [B, L, context_dim]
//! let pooled = Tensor::randn([2, 32], (Kind::Float, Device::Cpu));    // [B, pooled_dim]
//! let v = model.forward(&x, &t, &text, &pooled)?;                     // velocity, like x
//! # Ok::<(), apt_mmdit::MmditError>(())
//! ```

#![warn(missing_docs)]

pub mod analytic;
pub mod attention;
pub mod block;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod family;
pub mod linears;
pub mod lora;
pub mod model;
pub mod parity;
pub mod presets;
pub mod recompute;
pub mod rope;
pub mod sharding;
pub mod wan;
pub mod weights;

pub use analytic::{forward_flops, param_count, ParamCount};
pub use config::{AttentionBackend, MmditConfig, Positions, Prediction};
pub use error::{MmditError, Result};
pub use family::{Model, ModelConfig};
pub use model::{Mmdit, TapOutput, TIMESTEP_SCALE};
pub use presets::Preset;
pub use wan::{WanConfig, WanTransformer};
pub use weights::{load_safetensors, save_safetensors};

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
