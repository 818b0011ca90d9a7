//! Captions → conditioning tensors: embeddings from the frozen text encoder (MiniLM for the
//! MMDiT, a Wan pipeline's UMT5 for Wan 2.1) through the on-disk cache, padded (with zeros) or
//! truncated to a fixed token count so that every batch, and the conditional and null halves
//! of a guided batch, line up. Classifier-free-guidance dropout swaps a caption for the empty
//! caption; guidance's unconditional half is the negative prompt (Wan's default for Wan, the
//! empty caption for MiniLM, unless `[text] negative_prompt` says otherwise).

use std::path::Path;
use std::sync::OnceLock;

use apt_data::text::Umt5TextEncoder;
use apt_data::{EmbeddingCache, TextEmbedding, TextEncoder};
use apt_flow::data::CaptionEncoder;
use apt_flow::{Conditioning, FlowError};
use tch::{Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::error::Result;
use crate::wan_dir::{WanPipelineDir, WAN_NEGATIVE_PROMPT};

pub use crate::config::MINILM_WIDTH;

/// The frozen encoder behind a [`TextConditioner`], loaded on the first caption missing from
/// the cache (a run whose captions are all cached never reads the encoder's weights).
#[derive(Debug)]
enum Encoder {
    MiniLm(OnceLock<TextEncoder>),
    Umt5 {
        dir: WanPipelineDir,
        width: i64,
        kind: Kind,
        loaded: OnceLock<Umt5TextEncoder>,
    },
}

/// Embeds captions for the model.
#[derive(Debug)]
pub struct TextConditioner {
    encoder: Encoder,
    cache: EmbeddingCache,
    tokens: i64,
    negative_prompt: String,
    device: Device,
}

impl TextConditioner {
    /// MiniLM (from the assets, loaded when first needed) with its cache in `cache_dir`,
    /// padding to `tokens` tokens; the empty caption is the negative prompt.
    pub fn minilm(cache_dir: &Path, tokens: usize, device: Device) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::MiniLm(OnceLock::new()),
            cache: EmbeddingCache::new(cache_dir)?,
            tokens: tokens as i64,
            negative_prompt: String::new(),
            device,
        })
    }

    /// The UMT5 encoder and tokenizer of the Wan pipeline `dir` (loaded on `device` in
    /// `kind` when first needed) with its cache in `cache_dir`, padding to `tokens` tokens
    /// (Wan: 512); Wan's default negative prompt.
    pub fn umt5(
        dir: &WanPipelineDir,
        cache_dir: &Path,
        tokens: usize,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::Umt5 {
                dir: dir.clone(),
                width: dir.text_width()? as i64,
                kind,
                loaded: OnceLock::new(),
            },
            cache: EmbeddingCache::new(cache_dir)?,
            tokens: tokens as i64,
            negative_prompt: WAN_NEGATIVE_PROMPT.into(),
            device,
        })
    }

    /// The run's text conditioning: the Wan pipeline's UMT5 under `[model] from` (its cache in
    /// `<text cache>/umt5`), else MiniLM; `[text] negative_prompt` when given.
    pub fn for_run(run: &RunConfig, device: Device) -> Result<Self> {
        let mut text = match run.wan_pipeline()? {
            Some(dir) => Self::umt5(
                &dir,
                &run.text_cache().join("umt5"),
                run.text.tokens,
                run.text.precision.compute_kind(),
                device,
            )?,
            None => Self::minilm(&run.text_cache(), run.text.tokens, device)?,
        };
        if let Some(negative) = &run.text.negative_prompt {
            text.negative_prompt = negative.clone();
        }
        Ok(text)
    }

    /// The embedding of one caption (the encoder loaded on first use).
    fn encode(&self, caption: &str) -> apt_data::Result<TextEmbedding> {
        match &self.encoder {
            Encoder::MiniLm(cell) => {
                if cell.get().is_none() {
                    // Building the encoder draws (overwritten) initial weights from libtorch's
                    // generator.
                    let e =
                        apt_flow::rng::with_global_seed(0, || TextEncoder::minilm(Device::Cpu))?;
                    let _ = cell.set(e);
                }
                cell.get().expect("set above").encode(caption)
            }
            Encoder::Umt5 {
                dir, loaded, kind, ..
            } => {
                if loaded.get().is_none() {
                    let mut e = Umt5TextEncoder::load(
                        &dir.tokenizer(),
                        &dir.text_encoder(),
                        self.tokens as usize,
                        self.device,
                    )?;
                    e.set_kind(*kind);
                    let _ = loaded.set(e);
                }
                let (states, lengths) = loaded.get().expect("set above").encode(&[caption])?;
                // Cached and batched in fp32 on the CPU, whatever the encoder ran in.
                let states = states.to_device(Device::Cpu).to_kind(Kind::Float);
                Ok(TextEmbedding {
                    context: states.get(0).narrow(0, 0, lengths[0]),
                    // Wan takes no pooled vector: an empty one keeps the batch layout.
                    pooled: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
                })
            }
        }
    }

    /// Token width of the context (384 for MiniLM, the encoder's `d_model` for UMT5).
    pub fn width(&self) -> i64 {
        match &self.encoder {
            Encoder::MiniLm(_) => MINILM_WIDTH,
            Encoder::Umt5 { width, .. } => *width,
        }
    }

    /// The negative prompt (guidance's unconditional caption).
    pub fn negative_prompt(&self) -> &str {
        &self.negative_prompt
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
            let embedding = self.cache.get_with(text, |t| self.encode(t))?;
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
    /// Guidance's unconditional half for one sample (`[1, tokens, D]`, `[1, D]`): the negative
    /// prompt's condition.
    pub fn null(&self) -> Result<Conditioning> {
        self.batch(std::slice::from_ref(&self.negative_prompt), &[false])
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
