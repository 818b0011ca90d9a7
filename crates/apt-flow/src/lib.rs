//! # apt-flow
//!
//! Rectified flow for APT: the flow-matching loss, Euler/Heun samplers with classifier-free
//! guidance (the multi-step teacher), deterministic and consistency distillation to a one-step
//! generator, and the training loop every stage shares (also the adversarial one in
//! `apt-gan`). Data and text come in through two traits ([`data::ClipSource`],
//! [`data::CaptionEncoder`]), so this crate reads no data files; the only files it touches are
//! the training loop's own checkpoints and metrics log.

#![warn(missing_docs)]

pub mod data;
pub mod distill;
pub mod error;
pub mod flow;
pub mod gaussian;
pub mod onestep;
pub mod pretrain;
pub mod rng;
pub mod sampler;
pub mod testing;
pub mod timesteps;
pub mod train;

pub use data::{CaptionEncoder, ClipSource, Cursor};
pub use error::{FlowError, Result};
pub use flow::{flow_matching_loss, interpolate, velocity_target, Conditioning, VelocityModel};
pub use onestep::OneStepGenerator;
pub use rng::TensorRng;
pub use sampler::{sample, sample_trajectory, sample_with, Guidance, Method, SamplerConfig};
pub use timesteps::{shift, TimeDistribution, TimestepSampler};
pub use train::{Part, RunEnd, TrainConfig, TrainStep, Trainer};

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
