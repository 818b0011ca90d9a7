//! Text conditioning with a real frozen encoder: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide)
//! loaded from `model.safetensors` + `tokenizer.json` + `config.json`.
//!
//! Per caption: the last layer's token states `[L, 384]` (special tokens included) as the
//! context, and sentence-transformers' mean pooling over them `[384]` (before any
//! normalisation) as the pooled vector. The empty caption's embedding is the CFG null
//! condition.

mod bert;
mod cache;
pub mod parity;
mod umt5;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use tokenizers::Tokenizer;

pub use bert::{Bert, BertConfig};
pub use cache::EmbeddingCache;
pub use umt5::{Umt5Config, Umt5Encoder, Umt5TextEncoder};

use crate::error::{DataError, Result};

/// Longest tokenised caption (sentence-transformers' `max_seq_length` for MiniLM).
pub const MAX_TOKENS: usize = 256;

/// A caption's embedding.
#[derive(Debug)]
pub struct TextEmbedding {
    /// Token states `[L, D]`.
    pub context: Tensor,
    /// Mean-pooled sentence vector `[D]`.
    pub pooled: Tensor,
}

impl TextEmbedding {
    /// A copy that shares no storage (safe to keep while the source is reused).
    pub fn copy(&self) -> Self {
        Self {
            context: self.context.copy(),
            pooled: self.pooled.copy(),
        }
    }
}

/// A frozen BERT sentence encoder with its tokenizer.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    bert: Bert,
    device: Device,
    width: i64,
    _vs: nn::VarStore,
}

fn dataset_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Dataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl TextEncoder {
    /// all-MiniLM-L6-v2 from the assets `cargo xtask setup` fetched.
    pub fn minilm(device: Device) -> Result<Self> {
        Self::load(&crate::assets::minilm_dir()?, device)
    }

    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`. Every
    /// encoder weight must be present with its shape; the file may also hold the unused
    /// pooler and the `position_ids` buffer.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| DataError::Io {
            path: config_path.clone(),
            source,
        })?;
        let cfg: BertConfig = serde_json::from_str(&text)
            .map_err(|e| dataset_error(&config_path, format!("not a BERT config: {e}")))?;
        if cfg.hidden_act != "gelu" {
            return Err(dataset_error(
                &config_path,
                format!(
                    "hidden_act {:?} is not supported (expected \"gelu\")",
                    cfg.hidden_act
                ),
            ));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| dataset_error(&tokenizer_path, format!("not a tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| dataset_error(&tokenizer_path, e.to_string()))?;
        let mut vs = nn::VarStore::new(device);
        let bert = Bert::new(vs.root(), &cfg);
        let weights = dir.join("model.safetensors");
        load_weights(&vs, std::slice::from_ref(&weights), &weights, |k| {
            k.starts_with("pooler.") || k == "embeddings.position_ids"
        })?;
        vs.freeze();
        Ok(Self {
            tokenizer,
            bert,
            device,
            width: cfg.hidden_size,
            _vs: vs,
        })
    }

    /// Embedding width (384 for MiniLM).
    pub fn width(&self) -> i64 {
        self.width
    }

    /// Token ids of a caption, special tokens included.
    pub fn token_ids(&self, caption: &str) -> Result<Vec<i64>> {
        let encoding = self
            .tokenizer
            .encode(caption, true)
            .map_err(|e| DataError::Option {
                key: "caption",
                reason: format!("cannot tokenise {caption:?}: {e}"),
            })?;
        Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Embeds one caption.
    pub fn encode(&self, caption: &str) -> Result<TextEmbedding> {
        Ok(self.encode_batch(&[caption])?.pop().expect("one caption"))
    }

    /// The CFG null condition: the empty caption's embedding.
    pub fn null(&self) -> Result<TextEmbedding> {
        self.encode("")
    }

    /// Embeds captions in one padded batch; each result has its own length (padding removed).
    pub fn encode_batch(&self, captions: &[&str]) -> Result<Vec<TextEmbedding>> {
        if captions.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<Vec<i64>> = captions
            .iter()
            .map(|c| self.token_ids(c))
            .collect::<Result<_>>()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let mut flat = Vec::with_capacity(ids.len() * longest as usize);
        let mut mask = Vec::with_capacity(flat.capacity());
        for row in &ids {
            flat.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest as usize - row.len())),
            );
            mask.extend((0..longest as usize).map(|j| i64::from(j < row.len())));
        }
        let b = ids.len() as i64;
        let input = Tensor::from_slice(&flat)
            .view([b, longest])
            .to_device(self.device);
        let mask = Tensor::from_slice(&mask)
            .view([b, longest])
            .to_device(self.device);
        let states = tch::no_grad(|| self.bert.forward(&input, &mask));
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let context = states.get(i as i64).narrow(0, 0, row.len() as i64).copy();
                let pooled = context.mean_dim(0, false, Kind::Float);
                TextEmbedding { context, pooled }
            })
            .collect())
    }
}

/// Strict load from `files` (one file, or the shards of a model): every variable present with
/// its shape; only tensors `extra` accepts may be left over. `label` names the source.
fn load_weights(
    vs: &nn::VarStore,
    files: &[PathBuf],
    label: &Path,
    extra: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for path in files {
        let read = Tensor::read_safetensors(path)
            .map_err(|e| dataset_error(path, format!("not a readable safetensors file: {e}")))?;
        tensors.extend(read);
    }
    let path = label;
    let vars = vs.variables();
    let missing: BTreeSet<&String> = vars.keys().filter(|k| !tensors.contains_key(*k)).collect();
    let unexpected: BTreeSet<&String> = tensors
        .keys()
        .filter(|k| !vars.contains_key(*k) && !extra(k))
        .collect();
    let misshaped: Vec<String> = vars
        .iter()
        .filter_map(|(k, v)| {
            tensors
                .get(k)
                .filter(|t| t.size() != v.size())
                .map(|t| format!("{k}: {:?} vs {:?}", t.size(), v.size()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
        return Err(dataset_error(path, format!("weights do not match the encoder: missing {missing:?}, unexpected {unexpected:?}, wrong shapes {misshaped:?}")));
    }
    tch::no_grad(|| {
        for (k, mut v) in vars {
            v.copy_(&tensors[&k].to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(())
}
