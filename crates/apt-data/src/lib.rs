//! # apt-data
//!
//! Video data for apt-rs: in-process FFmpeg decoding of real videos and images, clip sampling
//! and resizing to `[C, T, H, W]` tensors in [-1, 1].

#![warn(missing_docs)]

pub mod assets;
pub mod clip;
mod convert;
pub mod dataset;
pub mod decode;
mod decode_pool;
pub mod error;
pub mod estimator;
mod frames;
pub mod index;
mod input;
pub mod loader;
pub mod seek;
pub mod shapes;
pub mod text;
pub mod write;

pub use clip::{load_clip, load_clip_seeking, Clip, ClipSpec, FrameStep, Placement};
pub use dataset::{Dataset, Item, Media, OnBadSample, Sample, Skipped};
pub use decode::{decode, decode_frames, decode_frames_until, probe};
pub use error::{DataError, Result};
pub use frames::{FrameSize, Frames, SeekIndex, VideoInfo};
pub use loader::{Batch, Cursor, Loader, LoaderConfig, LoaderStats};
pub use text::{EmbeddingCache, TextEmbedding, TextEncoder};
pub use write::write_video;

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
