//! UMT5's encoder on tch (Wan 2.1's text encoder, UMT5-XXL): shared token embeddings, pre-norm
//! blocks of self-attention — unscaled dot products plus each layer's own bucketed relative
//! position bias — and a gated-GELU (tanh) feed-forward network, T5's scale-only RMS norm, and
//! a final norm. Variable names as in transformers' `UMT5EncoderModel`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{nn, Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::{dataset_error, load_weights};
use crate::error::{DataError, Result};

/// The fields of a transformers UMT5 `config.json` the encoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Umt5Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width.
    pub d_model: i64,
    /// Channels per head.
    pub d_kv: i64,
    /// Feed-forward width.
    pub d_ff: i64,
    /// Encoder blocks.
    pub num_layers: i64,
    /// Heads.
    pub num_heads: i64,
    /// Relative-position buckets (both directions together).
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which relative positions share a bucket.
    pub relative_attention_max_distance: i64,
    /// Norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Feed-forward kind: only `"gated-gelu"` (UMT5's) is supported.
    pub feed_forward_proj: String,
}

fn default_eps() -> f64 {
    1e-6
}

/// T5's norm: `w · x / √(mean(x²) + eps)`, statistics in f32, no mean, no bias.
fn t5_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let variance = x
        .to_kind(Kind::Float)
        .square()
        .mean_dim(-1, true, Kind::Float);
    let normed = x * (variance + eps).rsqrt();
    weight * normed.to_kind(weight.kind())
}

#[derive(Debug)]
struct Block {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    relative_bias: Tensor,
    attention_norm: Tensor,
    wi_0: Tensor,
    wi_1: Tensor,
    wo: Tensor,
    ff_norm: Tensor,
}

/// The encoder. Variables: `shared.weight`, `encoder.block.<i>.layer.0.SelfAttention.{q,k,v,o,
/// relative_attention_bias}.weight`, `….layer.0.layer_norm.weight`,
/// `….layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`, `….layer.1.layer_norm.weight`,
/// `encoder.final_layer_norm.weight`.
#[derive(Debug)]
pub struct Umt5Encoder {
    shared: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    cfg: Umt5Config,
}

impl Umt5Encoder {
    /// Creates the variables under `p` (transformers' names).
    pub fn new(p: nn::Path, cfg: &Umt5Config) -> Self {
        let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
        let w = |p: nn::Path, o: i64, i: i64| p.randn("weight", &[o, i], 0.0, 0.02);
        let norm = |p: nn::Path| p.ones("weight", &[d]);
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = &p / "encoder" / "block" / i / "layer";
                let att = &b / 0 / "SelfAttention";
                let dense = &b / 1 / "DenseReluDense";
                Block {
                    q: w(&att / "q", inner, d),
                    k: w(&att / "k", inner, d),
                    v: w(&att / "v", inner, d),
                    o: w(&att / "o", d, inner),
                    relative_bias: w(
                        &att / "relative_attention_bias",
                        cfg.relative_attention_num_buckets,
                        cfg.num_heads,
                    ),
                    attention_norm: norm(&b / 0 / "layer_norm"),
                    wi_0: w(&dense / "wi_0", ff, d),
                    wi_1: w(&dense / "wi_1", ff, d),
                    wo: w(&dense / "wo", d, ff),
                    ff_norm: norm(&b / 1 / "layer_norm"),
                }
            })
            .collect();
        Self {
            shared: w(&p / "shared", cfg.vocab_size, d),
            blocks,
            final_norm: norm(&p / "encoder" / "final_layer_norm"),
            cfg: cfg.clone(),
        }
    }

    /// Loads a transformers `UMT5EncoderModel` directory (`config.json`, and
    /// `model.safetensors` or the shards its index names) strictly, frozen; returns the store
    /// that holds the weights with the encoder.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let cfg = Self::read_config(dir)?;
        let mut vs = nn::VarStore::new(device);
        let encoder = Self::new(vs.root(), &cfg);
        // transformers ties the encoder's embedding to `shared`; older saves keep both.
        load_weights(&vs, &weight_files(dir)?, dir, |k| {
            k == "encoder.embed_tokens.weight"
        })?;
        vs.freeze();
        Ok((vs, encoder))
    }

    /// Reads and checks `dir/config.json` (a UMT5 encoder with the gated-GELU feed-forward).
    pub fn read_config(dir: &Path) -> Result<Umt5Config> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| DataError::Io {
            path: config_path.clone(),
            source,
        })?;
        let cfg: Umt5Config = serde_json::from_str(&text)
            .map_err(|e| dataset_error(&config_path, format!("not a UMT5 config: {e}")))?;
        if cfg.feed_forward_proj != "gated-gelu" {
            return Err(dataset_error(
                &config_path,
                format!(
                    "feed_forward_proj {:?} is not supported (UMT5's is \"gated-gelu\")",
                    cfg.feed_forward_proj
                ),
            ));
        }
        Ok(cfg)
    }

    /// The config it was built from.
    pub fn config(&self) -> &Umt5Config {
        &self.cfg
    }

    /// The last hidden state `[B, L, d_model]` of token ids `[B, L]` (i64) with
    /// `attention_mask` `[B, L]` (1 for tokens, 0 for padding, which no token attends to).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let [b, l] = <[i64; 2]>::try_from(input_ids.size()).expect("[B, L] token ids");
        let (heads, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let buckets = self.relative_buckets(l, input_ids.device());
        // Padding keys get the lowest float: no weight after the softmax.
        let mask = (attention_mask.to_kind(Kind::Float).neg() + 1.0).view([b, 1, 1, l])
            * f64::from(f32::MIN);
        let mut h = Tensor::embedding(&self.shared, input_ids, -1, false, false);
        for block in &self.blocks {
            let x = t5_norm(&h, &block.attention_norm, self.cfg.layer_norm_epsilon);
            let split = |w: &Tensor| x.matmul(&w.tr()).view([b, l, heads, dk]).transpose(1, 2);
            let (q, k, v) = (split(&block.q), split(&block.k), split(&block.v));
            let bias = Tensor::embedding(&block.relative_bias, &buckets, -1, false, false)
                .permute([2, 0, 1])
                .unsqueeze(0);
            let scores = q.matmul(&k.transpose(2, 3)) + bias + &mask;
            let weights = scores.softmax(-1, Kind::Float).to_kind(v.kind());
            let attended = weights
                .matmul(&v)
                .transpose(1, 2)
                .reshape([b, l, heads * dk]);
            h = &h + attended.matmul(&block.o.tr());
            let x = t5_norm(&h, &block.ff_norm, self.cfg.layer_norm_epsilon);
            let gated = x.matmul(&block.wi_0.tr()).gelu("tanh") * x.matmul(&block.wi_1.tr());
            h = &h + gated.matmul(&block.wo.tr());
        }
        t5_norm(&h, &self.final_norm, self.cfg.layer_norm_epsilon)
    }

    /// T5's bidirectional relative-position buckets `[L, L]` (key position − query position):
    /// half the buckets per direction; within one, exact distances below half of them, then
    /// logarithmic bins up to `relative_attention_max_distance` (computed in f32 as
    /// transformers does).
    fn relative_buckets(&self, l: i64, device: tch::Device) -> Tensor {
        let pos = Tensor::arange(l, (Kind::Int64, device));
        let relative = pos.unsqueeze(0) - pos.unsqueeze(1);
        let buckets = self.cfg.relative_attention_num_buckets / 2;
        let direction = relative.gt(0).to_kind(Kind::Int64) * buckets;
        let distance = relative.abs();
        let max_exact = buckets / 2;
        let ratio = (distance.to_kind(Kind::Float) / max_exact as f64).log()
            / ((self.cfg.relative_attention_max_distance as f64) / max_exact as f64).ln()
            * (buckets - max_exact) as f64;
        let large = (ratio.to_kind(Kind::Int64) + max_exact).clamp_max(buckets - 1);
        direction + distance.where_self(&distance.lt(max_exact), &large)
    }
}

/// Wan 2.1's text conditioning: the tokenizer of a pipeline's `tokenizer/` (UMT5's
/// SentencePiece vocabulary, appending `</s>`), the encoder of its `text_encoder/`, and the
/// pipeline's treatment: every prompt padded (`<pad>`) or cut to `max_length` tokens (512 in
/// Wan), encoded with the padding masked, and the states past each prompt's own length zeroed.
#[derive(Debug)]
pub struct Umt5TextEncoder {
    tokenizer: Tokenizer,
    encoder: Umt5Encoder,
    max_length: usize,
    pad_id: i64,
    device: Device,
    vs: nn::VarStore,
}

impl Umt5TextEncoder {
    /// Loads `tokenizer_dir/tokenizer.json` and `encoder_dir` (`config.json`, and
    /// `model.safetensors` or the shards its `model.safetensors.index.json` names); prompts
    /// are padded or cut to `max_length` tokens.
    pub fn load(
        tokenizer_dir: &Path,
        encoder_dir: &Path,
        max_length: usize,
        device: Device,
    ) -> Result<Self> {
        let (mut tokenizer, pad_id) = Self::check_files(tokenizer_dir, encoder_dir)?;
        let tokenizer_path = tokenizer_dir.join("tokenizer.json");
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(max_length),
            pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| dataset_error(&tokenizer_path, e.to_string()))?;
        let (vs, encoder) = Umt5Encoder::load(encoder_dir, device)?;
        Ok(Self {
            tokenizer,
            encoder,
            max_length,
            pad_id: pad_id as i64,
            device,
            vs,
        })
    }

    /// Checks, without reading the weights, what [`load`](Self::load) needs: the encoder's
    /// `config.json` and weight files (every shard its index names), and a
    /// `tokenizer.json` with a `<pad>` token and no more tokens than the encoder's vocabulary.
    /// Returns the tokenizer and its pad id.
    pub fn check_files(tokenizer_dir: &Path, encoder_dir: &Path) -> Result<(Tokenizer, u32)> {
        let cfg = Umt5Encoder::read_config(encoder_dir)?;
        weight_files(encoder_dir)?;
        let config_path = encoder_dir.join("config.json");
        let tokenizer_path = tokenizer_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| dataset_error(&tokenizer_path, format!("not a tokenizer: {e}")))?;
        let pad_id = tokenizer.token_to_id("<pad>").ok_or_else(|| {
            dataset_error(&tokenizer_path, "has no `<pad>` token (UMT5's is id 0)")
        })?;
        if tokenizer.get_vocab_size(true) as i64 > cfg.vocab_size {
            return Err(dataset_error(
                &tokenizer_path,
                format!(
                    "has {} tokens, more than the encoder's vocabulary of {} ({}): another \
                     model's tokenizer",
                    tokenizer.get_vocab_size(true),
                    cfg.vocab_size,
                    config_path.display()
                ),
            ));
        }
        Ok((tokenizer, pad_id))
    }

    /// Token ids and attention masks `[B, max_length]` of `prompts`, as the Wan pipeline's
    /// tokenizer call gives them (`padding="max_length"`, `truncation=True`).
    pub fn tokenize(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let mut ids = Vec::with_capacity(prompts.len() * self.max_length);
        let mut mask = Vec::with_capacity(ids.capacity());
        for prompt in prompts {
            let e = self
                .tokenizer
                .encode(*prompt, true)
                .map_err(|e| DataError::Option {
                    key: "caption",
                    reason: format!("cannot tokenise {prompt:?}: {e}"),
                })?;
            ids.extend(e.get_ids().iter().map(|&i| i as i64));
            mask.extend(e.get_attention_mask().iter().map(|&m| m as i64));
        }
        let shape = [prompts.len() as i64, self.max_length as i64];
        Ok((
            Tensor::from_slice(&ids).view(shape).to_device(self.device),
            Tensor::from_slice(&mask).view(shape).to_device(self.device),
        ))
    }

    /// The prompts' token states `[B, max_length, d_model]`, zero past each prompt's tokens
    /// (what the Wan pipeline hands its transformer), and each prompt's token count.
    pub fn encode(&self, prompts: &[&str]) -> Result<(Tensor, Vec<i64>)> {
        let (ids, mask) = self.tokenize(prompts)?;
        let states = tch::no_grad(|| self.encoder.forward(&ids, &mask));
        let lengths: Vec<i64> = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64))
            .map_err(|e| DataError::Option {
            key: "caption",
            reason: e.to_string(),
        })?;
        let keep = mask.to_kind(states.kind()).unsqueeze(-1);
        Ok((states * keep, lengths))
    }

    /// Casts the encoder's weights to `kind` (bf16 halves UMT5-XXL's 22 GB; the norms and
    /// the attention softmax still run in fp32).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// The padding token's id.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }
}

/// `model.safetensors`, or the shards `model.safetensors.index.json` names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        dataset_error(
            dir,
            "holds neither model.safetensors nor model.safetensors.index.json",
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| dataset_error(&index, format!("not JSON: {e}")))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| dataset_error(&index, "has no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    match files.iter().find(|f| !f.is_file()) {
        Some(missing) => Err(dataset_error(
            missing,
            format!("missing: {} names it", index.display()),
        )),
        None => Ok(files),
    }
}
