//! `[text]`: the frozen text encoder's settings (MiniLM for the MMDiT, a Wan pipeline's UMT5).

use std::path::PathBuf;

use apt_flow::train::Precision;
use serde::{Deserialize, Serialize};

/// `[text]`: the frozen text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// Tokens per caption after padding/truncation.
    #[serde(default = "default_tokens")]
    pub tokens: usize,
    /// Caption-embedding cache (default: `<run>/text-cache`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// The negative prompt: guidance's unconditional half (default: Wan 2.1's for a Wan
    /// pipeline, the empty caption for MiniLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// The precision a Wan pipeline's UMT5 encoder runs in: `fp32`, or `bf16` (half the memory
    /// of UMT5-XXL's 22 GB; the cached embeddings are fp32 either way). MiniLM runs in fp32.
    #[serde(default, skip_serializing_if = "is_fp32")]
    pub precision: Precision,
}

fn is_fp32(p: &Precision) -> bool {
    *p == Precision::Fp32
}

fn default_tokens() -> usize {
    16
}

impl Default for TextSection {
    fn default() -> Self {
        Self {
            tokens: default_tokens(),
            cache: None,
            negative_prompt: None,
            precision: Precision::Fp32,
        }
    }
}
