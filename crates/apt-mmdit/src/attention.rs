//! Joint attention over the concatenated visual and text tokens (SD3's `JointAttnProcessor2_0`).

use tch::{nn, nn::Module, Kind, Tensor};

use crate::config::AttentionBackend;
use crate::lora::{linear, Linear};
use crate::rope::RopeTable;

/// RMSNorm over the last dimension with a learned scale (diffusers' `RMSNorm`):
/// `x / √(mean(x²) + eps) · weight`, statistics in f32; any shape `[…, dim]`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Creates the norm under `p` with a `[dim]` weight initialised to one.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.ones("weight", &[dim]),
            eps,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x
            .to_kind(Kind::Float)
            .square()
            .mean_dim(-1, true, Kind::Float);
        let normed = x * (variance + self.eps).rsqrt();
        normed.to_kind(self.weight.kind()) * &self.weight
    }
}

/// `softmax(q kᵀ / √hd) v` with the chosen kernel: q `[B, H, N, hd]`, k and v `[B, H, M, hd]`
/// → `[B, H, N, hd]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, backend: AttentionBackend) -> Tensor {
    match backend {
        AttentionBackend::Sdpa => {
            Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None, false)
        }
        AttentionBackend::Math => {
            let scale = 1.0 / (q.size()[3] as f64).sqrt();
            let scores = q.matmul(&k.transpose(-2, -1)) * scale;
            scores.softmax(-1, scores.kind()).matmul(v)
        }
    }
}

/// Per-stream query/key/value projections and optional QK RMSNorm scales.
#[derive(Debug)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Projections {
    /// `x` `[B, N, D]` → `[B, N, 3D]` (q | k | v). The three projections run as one matmul on
    /// the concatenated weights (fewer, larger GEMMs; same result).
    fn project(&self, x: &Tensor) -> Tensor {
        let layers = [&self.q, &self.k, &self.v];
        if layers.iter().any(|l| l.adapter.is_some()) {
            // LoRA on a projection: each layer with its adapter (the fused GEMM has none).
            let out: Vec<Tensor> = layers.iter().map(|l| l.forward(x)).collect();
            return Tensor::cat(&out, -1);
        }
        let weight = Tensor::cat(&[&self.q.ws, &self.k.ws, &self.v.ws], 0);
        let biases: Vec<&Tensor> = [&self.q, &self.k, &self.v]
            .iter()
            .filter_map(|l| l.bs.as_ref())
            .collect();
        let bias = (biases.len() == 3).then(|| Tensor::cat(&biases, 0));
        x.linear(&weight, bias.as_ref())
    }
}

/// QK RMSNorm over the concatenated `[visual; text]` tokens: each stream keeps its own scale,
/// applied per token (`[S, hd]`), so one normalisation serves both streams.
fn joint_rms_norm(x: &Tensor, visual: &RmsNorm, text: &RmsNorm, n: i64) -> Tensor {
    let s = x.size()[2];
    let hd = visual.weight.size()[0];
    let scale = Tensor::cat(
        &[
            visual.weight.expand([n, hd], false),
            text.weight.expand([s - n, hd], false),
        ],
        0,
    );
    let variance = x
        .to_kind(Kind::Float)
        .square()
        .mean_dim(-1, true, Kind::Float);
    (x * (variance + visual.eps).rsqrt()).to_kind(scale.kind()) * scale
}

/// SD3 joint attention (`attn`): visual tokens use `to_q/to_k/to_v/to_out.0`, text tokens
/// `add_q_proj/add_k_proj/add_v_proj/to_add_out`; one attention runs over `[visual; text]`.
/// In a context-pre-only block the text output is dropped (no `to_add_out`).
#[derive(Debug)]
pub struct JointAttention {
    visual: Projections,
    text: Projections,
    to_out: Linear,
    to_add_out: Option<Linear>,
    heads: i64,
    backend: AttentionBackend,
}

impl JointAttention {
    /// Creates the attention under `p` (`attn`).
    pub fn new(
        p: nn::Path,
        dim: i64,
        heads: i64,
        qk_norm: bool,
        context_pre_only: bool,
        backend: AttentionBackend,
    ) -> Self {
        let head_dim = dim / heads;
        let lin = |name: &str| linear(&p / name, dim, dim, Default::default());
        let norm = |name: &str| qk_norm.then(|| RmsNorm::new(&p / name, head_dim, 1e-6));
        Self {
            visual: Projections {
                q: lin("to_q"),
                k: lin("to_k"),
                v: lin("to_v"),
                norm_q: norm("norm_q"),
                norm_k: norm("norm_k"),
            },
            text: Projections {
                q: lin("add_q_proj"),
                k: lin("add_k_proj"),
                v: lin("add_v_proj"),
                norm_q: norm("norm_added_q"),
                norm_k: norm("norm_added_k"),
            },
            to_out: linear(&p / "to_out" / 0, dim, dim, Default::default()),
            to_add_out: (!context_pre_only).then(|| lin("to_add_out")),
            heads,
            backend,
        }
    }

    /// Visual `[B, N, D]` and text `[B, L, D]` (both already modulated) → attention outputs for
    /// each stream, `[B, N, D]` and `[B, L, D]` (text output `None` in a context-pre-only
    /// block). The streams are projected separately, then concatenated once as `[B, N+L, 3D]`;
    /// q, k, v are views of it. `rope` covers all `N + L` tokens (text rows are the identity).
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        rope: Option<&RopeTable>,
    ) -> (Tensor, Option<Tensor>) {
        let (b, n, d) = x.size3().expect("tokens are [B, N, D]");
        let qkv = Tensor::cat(&[self.visual.project(x), self.text.project(ctx)], 1);
        let s = qkv.size()[1];
        let qkv = qkv.view([b, s, 3, self.heads, -1]).permute([2, 0, 3, 1, 4]);
        let (mut q, mut k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        if let (Some(vq), Some(tq)) = (&self.visual.norm_q, &self.text.norm_q) {
            q = joint_rms_norm(&q, vq, tq, n);
        }
        if let (Some(vk), Some(tk)) = (&self.visual.norm_k, &self.text.norm_k) {
            k = joint_rms_norm(&k, vk, tk, n);
        }
        if let Some(rope) = rope {
            q = rope.apply(&q);
            k = rope.apply(&k);
        }
        let out = attention(&q, &k, &v, self.backend)
            .transpose(1, 2)
            .reshape([b, s, d]);
        let visual = self.to_out.forward(&out.narrow(1, 0, n));
        let text = self
            .to_add_out
            .as_ref()
            .map(|proj| proj.forward(&out.narrow(1, n, s - n)));
        (visual, text)
    }
}
