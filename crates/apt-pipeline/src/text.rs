//! Captions → conditioning tensors: embeddings from the frozen MiniLM encoder through the
//! on-disk cache, padded (with zeros) or truncated to a fixed token count so that every batch,
//! and the conditional and null halves of a guided batch, line up. Classifier-free-guidance
//! dropout swaps a caption for the null (empty) caption.

use std::path::Path;
use std::sync::OnceLock;

use apt_data::{EmbeddingCache, TextEmbedding, TextEncoder};
use apt_flow::data::CaptionEncoder;
use apt_flow::{Conditioning, FlowError};
use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// Width of MiniLM's token states and pooled vector.
pub const MINILM_WIDTH: i64 = 384;

/// Embeds captions for the model.
#[derive(Debug)]
pub struct TextConditioner {
    /// Loaded on the first caption missing from the cache (a run whose captions are all cached
    /// never reads the encoder's 90 MB).
    encoder: OnceLock<TextEncoder>,
    cache: EmbeddingCache,
    tokens: i64,
    device: Device,
}

impl TextConditioner {
    /// MiniLM (from the assets, loaded when first needed) with its cache in `cache_dir`,
    /// padding to `tokens` tokens.
    pub fn minilm(cache_dir: &Path, tokens: usize, device: Device) -> Result<Self> {
        Ok(Self {
            encoder: OnceLock::new(),
            cache: EmbeddingCache::new(cache_dir)?,
            tokens: tokens as i64,
            device,
        })
    }

    fn encoder(&self) -> apt_data::Result<&TextEncoder> {
        if let Some(e) = self.encoder.get() {
            return Ok(e);
        }
        // Building the encoder draws (overwritten) initial weights from libtorch's generator.
        let e = apt_flow::rng::with_global_seed(0, || TextEncoder::minilm(Device::Cpu))?;
        Ok(self.encoder.get_or_init(|| e))
    }

    /// Token width of the context (384 for MiniLM).
    pub fn width(&self) -> i64 {
        MINILM_WIDTH
    }

    /// Tokens per caption after padding/truncation.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    fn padded(&self, e: &TextEmbedding) -> (Tensor, Tensor) {
        let l = e.context.size()[0].min(self.tokens);
        let context = Tensor::zeros([self.tokens, self.width()], (Kind::Float, Device::Cpu));
        context.narrow(0, 0, l).copy_(&e.context.narrow(0, 0, l));
        (context, e.pooled.shallow_clone())
    }

    /// Conditioning for `captions`; where `drop[i]` is true, caption `i` is replaced by the
    /// null caption (CFG dropout).
    pub fn batch(&self, captions: &[String], drop: &[bool]) -> Result<Conditioning> {
        let mut contexts = Vec::with_capacity(captions.len());
        let mut pooled = Vec::with_capacity(captions.len());
        for (i, caption) in captions.iter().enumerate() {
            let text = if drop.get(i).copied().unwrap_or(false) {
                ""
            } else {
                caption.as_str()
            };
            let embedding = self.cache.get_with(text, |t| self.encoder()?.encode(t))?;
            let (c, p) = self.padded(&embedding);
            contexts.push(c);
            pooled.push(p);
        }
        Ok(Conditioning {
            context: Tensor::stack(&contexts, 0).to_device(self.device),
            pooled: Tensor::stack(&pooled, 0).to_device(self.device),
        })
    }
}

impl TextConditioner {
    /// The null condition for one sample (`[1, tokens, D]`, `[1, D]`).
    pub fn null(&self) -> Result<Conditioning> {
        self.batch(&[String::new()], &[false])
    }
}

impl CaptionEncoder for TextConditioner {
    fn encode(&self, captions: &[String], drop: &[bool]) -> apt_flow::Result<Conditioning> {
        self.batch(captions, drop).map_err(|e| match e {
            crate::PipelineError::Flow(f) => f,
            other => FlowError::Source(Box::new(other)),
        })
    }
}
