//! SD3's joint transformer block with adaLN-Zero modulation (diffusers' `JointTransformerBlock`).

use tch::{nn, nn::Module, Tensor};

use crate::attention::JointAttention;
use crate::config::MmditConfig;
use crate::lora::{linear, Linear};
use crate::rope::RopeTable;

/// LayerNorm over the last dimension without affine parameters, `(x − mean) / √(var + 1e-6)`
/// (every norm in the block); any shape.
pub fn layer_norm(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("non-scalar");
    x.layer_norm([d], None::<&Tensor>, None::<&Tensor>, 1e-6, true)
}

/// `x · (1 + scale) + shift` for tokens `x` `[B, N, D]` with per-sample `[B, D]` scale and
/// shift (one fused pass over x).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    shift.unsqueeze(1).addcmul(x, &(scale.unsqueeze(1) + 1.0))
}

/// The gated residual `x + gate · branch` for `x`, `branch` `[B, N, D]` with a per-sample
/// `[B, D]` gate (one fused pass).
pub fn gated_residual(x: &Tensor, gate: &Tensor, branch: &Tensor) -> Tensor {
    x.addcmul(&gate.unsqueeze(1), branch)
}

/// A linear layer initialised to zero (adaLN-Zero: every block starts as the identity).
pub fn zero_linear(p: nn::Path, input: i64, output: i64) -> Linear {
    linear(
        p,
        input,
        output,
        nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

/// Linear → GELU(tanh) → Linear (`ff.net.0.proj`, `ff.net.2`): `[…, D]` → `[…, D]`.
#[derive(Debug)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    /// Creates the MLP under `p` with hidden width `dim · ratio`.
    pub fn new(p: nn::Path, dim: i64, ratio: i64) -> Self {
        let net = &p / "net";
        Self {
            up: linear(&net / 0 / "proj", dim, dim * ratio, Default::default()),
            down: linear(&net / 2, dim * ratio, dim, Default::default()),
        }
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down.forward(&self.up.forward(x).gelu("tanh"))
    }
}

/// One MMDiT block: both streams are modulated from the conditioning vector, attend jointly,
/// and pass through their own MLP; gates scale every residual branch.
///
/// Visual modulation order: (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
/// The last block is *context-pre-only*: its text stream only feeds the attention (modulated
/// by a continuous (scale, shift) norm) and produces no output.
#[derive(Debug)]
pub struct JointBlock {
    norm1: Linear,
    norm1_context: Linear,
    attn: JointAttention,
    ff: FeedForward,
    ff_context: Option<FeedForward>,
    context_pre_only: bool,
}

impl JointBlock {
    /// Creates the block's variables under `p` (the model passes `transformer_blocks.{i}`);
    /// `context_pre_only` for the model's last block.
    pub fn new(p: nn::Path, cfg: &MmditConfig, context_pre_only: bool) -> Self {
        let d = cfg.hidden_size() as i64;
        let ratio = cfg.mlp_ratio as i64;
        let context_chunks = if context_pre_only { 2 } else { 6 };
        Self {
            norm1: zero_linear(&p / "norm1" / "linear", d, 6 * d),
            norm1_context: zero_linear(&p / "norm1_context" / "linear", d, context_chunks * d),
            attn: JointAttention::new(
                &p / "attn",
                d,
                cfg.num_heads as i64,
                cfg.qk_norm,
                context_pre_only,
                cfg.attention,
            ),
            ff: FeedForward::new(&p / "ff", d, ratio),
            ff_context: (!context_pre_only).then(|| FeedForward::new(&p / "ff_context", d, ratio)),
            context_pre_only,
        }
    }

    /// Whether this block drops the text stream (the model's last block).
    pub fn is_context_pre_only(&self) -> bool {
        self.context_pre_only
    }

    /// Visual `[B, N, D]`, text `[B, L, D]`, `silu(c)` `[B, D]` → new visual tokens and new
    /// text tokens (`None` for a context-pre-only block).
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        cond_silu: &Tensor,
        rope: Option<&RopeTable>,
    ) -> (Tensor, Option<Tensor>) {
        let m = self.norm1.forward(cond_silu).chunk(6, 1);
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) =
            (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
        let x_mod = modulate(&layer_norm(x), shift_msa, scale_msa);

        let mc = self
            .norm1_context
            .forward(cond_silu)
            .chunk(if self.context_pre_only { 2 } else { 6 }, 1);
        let ctx_mod = if self.context_pre_only {
            // AdaLayerNormContinuous chunks as (scale, shift).
            modulate(&layer_norm(ctx), &mc[1], &mc[0])
        } else {
            modulate(&layer_norm(ctx), &mc[0], &mc[1])
        };

        let (attn_x, attn_ctx) = self.attn.forward(&x_mod, &ctx_mod, rope);
        let x = gated_residual(x, gate_msa, &attn_x);
        let ff_in = modulate(&layer_norm(&x), shift_mlp, scale_mlp);
        let x = gated_residual(&x, gate_mlp, &self.ff.forward(&ff_in));

        let ctx = match (&self.ff_context, attn_ctx) {
            (Some(ff_context), Some(attn_ctx)) => {
                let (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) =
                    (&mc[2], &mc[3], &mc[4], &mc[5]);
                let ctx = gated_residual(ctx, c_gate_msa, &attn_ctx);
                let ff_in = modulate(&layer_norm(&ctx), c_shift_mlp, c_scale_mlp);
                Some(gated_residual(
                    &ctx,
                    c_gate_mlp,
                    &ff_context.forward(&ff_in),
                ))
            }
            _ => None,
        };
        (x, ctx)
    }
}
