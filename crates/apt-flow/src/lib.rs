//! # apt-flow
//!
//! Rectified flow for the APT pipeline: flow-matching training, Euler/Heun samplers with
//! classifier-free guidance (the multi-step teacher), and the machinery every trainer shares.

#![warn(missing_docs)]

pub mod config;
pub mod data;
pub mod distill;
pub mod error;
pub mod evaluate;
pub mod flow;
pub mod gaussian;
pub mod metrics;
pub mod onestep;
pub mod pretrain;
pub mod rng;
pub mod run_eval;
pub mod run_files;
pub mod sampler;
pub mod text;
pub mod timesteps;
pub mod train;
pub mod trainer;

pub use config::RunConfig;
pub use error::{FlowError, Result};
pub use flow::{flow_matching_loss, interpolate, velocity_target, Conditioning, VelocityModel};
pub use onestep::OneStepGenerator;
pub use rng::TensorRng;
pub use sampler::{sample, sample_trajectory, Guidance, Method, SamplerConfig};
pub use timesteps::{shift, TimeDistribution, TimestepSampler};
