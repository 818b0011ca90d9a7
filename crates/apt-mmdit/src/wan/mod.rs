//! Wan 2.1 text-to-video (diffusers' `WanTransformer3DModel`): the DiT that open video
//! post-training works on, beside the MMDiT. One file per concept: `config.rs` (sizes,
//! presets, diffusers `config.json`, parameter counts), `block.rs` (self-attention with 3D RoPE,
//! cross-attention to the text, feed-forward, per-block modulation), `model.rs` (embeddings,
//! blocks, output, taps, loading), `recompute.rs` (activation recomputation).

pub mod block;
pub mod config;
pub mod model;
mod recompute;

pub use config::{WanConfig, WAN_CLASS_NAME};
pub use model::WanTransformer;
