//! A BERT encoder on tch, enough for sentence-transformers models such as all-MiniLM-L6-v2:
//! word + position + token-type embeddings, post-LayerNorm transformer layers with exact
//! (erf) GELU, variable names as in Hugging Face's `BertModel`.

use serde::Deserialize;
use tch::{nn, nn::Module, Kind, Tensor};

/// The fields of a Hugging Face BERT `config.json` this encoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width.
    pub hidden_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Longest input.
    pub max_position_embeddings: i64,
    /// Token types.
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Activation (only "gelu" is supported).
    pub hidden_act: String,
}

fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attention_out: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
}

/// The encoder (no pooler: sentence-transformers pools by averaging token states).
#[derive(Debug)]
pub struct Bert {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
}

impl Bert {
    /// Creates the variables under `p` with Hugging Face's names.
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = &p / "embeddings";
        let lin = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = &p / "encoder" / "layer" / i;
                let att = &l / "attention";
                Layer {
                    query: lin(&att / "self" / "query", h, h),
                    key: lin(&att / "self" / "key", h, h),
                    value: lin(&att / "self" / "value", h, h),
                    attention_out: lin(&att / "output" / "dense", h, h),
                    attention_norm: layer_norm(&att / "output" / "LayerNorm", h, eps),
                    intermediate: lin(&l / "intermediate" / "dense", h, cfg.intermediate_size),
                    output: lin(&l / "output" / "dense", cfg.intermediate_size, h),
                    output_norm: layer_norm(&l / "output" / "LayerNorm", h, eps),
                }
            })
            .collect();
        Self {
            word_embeddings: nn::embedding(
                &e / "word_embeddings",
                cfg.vocab_size,
                h,
                Default::default(),
            ),
            position_embeddings: nn::embedding(
                &e / "position_embeddings",
                cfg.max_position_embeddings,
                h,
                Default::default(),
            ),
            token_type_embeddings: nn::embedding(
                &e / "token_type_embeddings",
                cfg.type_vocab_size,
                h,
                Default::default(),
            ),
            embeddings_norm: layer_norm(&e / "LayerNorm", h, eps),
            layers,
            heads: cfg.num_attention_heads,
        }
    }

    /// Token ids `[B, L]` (int64) and attention mask `[B, L]` (1 = token, 0 = padding) →
    /// last-layer states `[B, L, H]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let (b, l) = input_ids.size2().expect("input ids are [B, L]");
        let positions = Tensor::arange(l, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let types = input_ids.zeros_like();
        let x = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&types);
        let mut x = self.embeddings_norm.forward(&x);
        // Additive mask: padding keys get the dtype's lowest value, as in transformers.
        let keep = attention_mask.to_kind(x.kind()).view([b, 1, 1, l]);
        let bias = (1.0 - keep) * f64::from(f32::MIN);
        for layer in &self.layers {
            let split = |t: Tensor| t.view([b, l, self.heads, -1]).transpose(1, 2);
            let q = split(layer.query.forward(&x));
            let k = split(layer.key.forward(&x));
            let v = split(layer.value.forward(&x));
            let scale = 1.0 / (q.size()[3] as f64).sqrt();
            let scores = q.matmul(&k.transpose(-2, -1)) * scale + &bias;
            let context = scores
                .softmax(-1, scores.kind())
                .matmul(&v)
                .transpose(1, 2)
                .reshape([b, l, -1]);
            x = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context) + &x));
            let hidden = layer.intermediate.forward(&x).gelu("none");
            x = layer
                .output_norm
                .forward(&(layer.output.forward(&hidden) + &x));
        }
        x
    }
}
