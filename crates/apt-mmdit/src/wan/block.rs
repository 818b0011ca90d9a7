//! One Wan 2.1 block (diffusers' `WanTransformerBlock`): self-attention with 3D RoPE and RMSNorm
//! across heads, cross-attention to the text, and a GELU (tanh) feed-forward network; the
//! self-attention and the feed-forward are modulated by the block's `scale_shift_table` plus
//! the timestep projection (shift, scale, gate each). Norms and modulation run in f32, like
//! diffusers' `FP32LayerNorm` and its `.float()` casts.

use tch::{nn, nn::Module, Kind, Tensor};

use super::config::WanConfig;
use crate::attention::{attention, RmsNorm};
use crate::config::AttentionBackend;
use crate::lora::{linear, Linear};
use crate::rope::RopeTable;

/// LayerNorm over the last dimension in f32 with an optional affine (`FP32LayerNorm`).
pub(super) fn layer_norm_f32(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Tensor {
    let d = *x.size().last().expect("non-scalar");
    let f = |t: Option<&Tensor>| t.map(|t| t.to_kind(Kind::Float));
    x.to_kind(Kind::Float)
        .layer_norm([d], f(weight).as_ref(), f(bias).as_ref(), eps, true)
}

/// Attention with query/key RMSNorm over all heads' channels (diffusers' `WanAttention`):
/// `to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`.
#[derive(Debug)]
struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: i64,
}

impl WanAttention {
    fn new(p: nn::Path, cfg: &WanConfig) -> Self {
        let d = cfg.hidden_size() as i64;
        let square = |name: &str| linear(&p / name, d, d, Default::default());
        Self {
            to_q: square("to_q"),
            to_k: square("to_k"),
            to_v: square("to_v"),
            to_out: linear(&p / "to_out" / 0, d, d, Default::default()),
            norm_q: RmsNorm::new(&p / "norm_q", d, cfg.eps),
            norm_k: RmsNorm::new(&p / "norm_k", d, cfg.eps),
            heads: cfg.num_attention_heads as i64,
        }
    }

    /// `x` `[B, N, D]` attends to `context` `[B, M, D]` (itself when `None`); the queries and
    /// keys are rotated by `rope` (self-attention only).
    fn forward(&self, x: &Tensor, context: Option<&Tensor>, rope: Option<&RopeTable>) -> Tensor {
        let kv = context.unwrap_or(x);
        let heads = |t: Tensor| {
            let [b, n, d] = <[i64; 3]>::try_from(t.size()).expect("[B, N, D]");
            t.view([b, n, self.heads, d / self.heads]).transpose(1, 2)
        };
        let mut q = heads(self.norm_q.forward(&self.to_q.forward(x)));
        let mut k = heads(self.norm_k.forward(&self.to_k.forward(kv)));
        let v = heads(self.to_v.forward(kv));
        if let Some(rope) = rope {
            q = rope.apply(&q);
            k = rope.apply(&k);
        }
        let out = attention(&q, &k, &v, AttentionBackend::Sdpa).transpose(1, 2);
        let [b, n, h, hd] = <[i64; 4]>::try_from(out.size()).expect("[B, N, H, hd]");
        self.to_out
            .forward(&out.reshape([b, n, h * hd]).to_kind(x.kind()))
    }
}

/// One block. Variables (diffusers' names): `attn1.*`, `attn2.*`, `norm2.{weight,bias}` (with
/// `cross_attn_norm`), `ffn.net.0.proj`, `ffn.net.2`, `scale_shift_table` `[1, 6, D]`.
#[derive(Debug)]
pub struct WanBlock {
    attn1: WanAttention,
    attn2: WanAttention,
    norm2: Option<(Tensor, Tensor)>,
    ffn_in: Linear,
    ffn_out: Linear,
    scale_shift_table: Tensor,
    eps: f64,
}

impl WanBlock {
    /// Creates the block's variables under `p` (`blocks.<i>`).
    pub fn new(p: nn::Path, cfg: &WanConfig) -> Self {
        let d = cfg.hidden_size() as i64;
        let f = cfg.ffn_dim as i64;
        let norm2 = cfg.cross_attn_norm.then(|| {
            (
                (&p / "norm2").ones("weight", &[d]),
                (&p / "norm2").zeros("bias", &[d]),
            )
        });
        Self {
            attn1: WanAttention::new(&p / "attn1", cfg),
            attn2: WanAttention::new(&p / "attn2", cfg),
            norm2,
            ffn_in: linear(&p / "ffn" / "net" / 0 / "proj", d, f, Default::default()),
            ffn_out: linear(&p / "ffn" / "net" / 2, f, d, Default::default()),
            scale_shift_table: p.var(
                "scale_shift_table",
                &[1, 6, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / (d as f64).sqrt(),
                },
            ),
            eps: cfg.eps,
        }
    }

    /// Tokens `x` `[B, N, D]`, the text `context` `[B, L, D]` (already embedded), the timestep
    /// projection `e` `[B, 6, D]` (f32) and the rotary table of the patch grid → `[B, N, D]`.
    pub fn forward(&self, x: &Tensor, context: &Tensor, e: &Tensor, rope: &RopeTable) -> Tensor {
        let kind = x.kind();
        let m = (self.scale_shift_table.to_kind(Kind::Float) + e).chunk(6, 1);
        let (shift, scale, gate) = (&m[0], &m[1], &m[2]);
        let (c_shift, c_scale, c_gate) = (&m[3], &m[4], &m[5]);
        let modulate = |h: &Tensor, shift: &Tensor, scale: &Tensor| {
            (layer_norm_f32(h, None, None, self.eps) * (scale + 1.0) + shift).to_kind(kind)
        };
        // 1. Self-attention.
        let attn = self
            .attn1
            .forward(&modulate(x, shift, scale), None, Some(rope));
        let h = (x.to_kind(Kind::Float) + attn * gate).to_kind(kind);
        // 2. Cross-attention.
        let normed = match &self.norm2 {
            Some((w, b)) => layer_norm_f32(&h, Some(w), Some(b), self.eps).to_kind(kind),
            None => h.shallow_clone(),
        };
        let h = &h + self.attn2.forward(&normed, Some(context), None);
        // 3. Feed-forward.
        let ff = self.ffn_out.forward(
            &self
                .ffn_in
                .forward(&modulate(&h, c_shift, c_scale))
                .gelu("tanh"),
        );
        (h.to_kind(Kind::Float) + ff.to_kind(Kind::Float) * c_gate).to_kind(kind)
    }
}
