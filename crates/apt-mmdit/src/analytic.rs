//! Closed-form parameter counts and forward FLOPs, for any config and input shape (no model is
//! built, so the 8B preset can be sized on a laptop).

use crate::config::MmditConfig;
use crate::embeddings::TIMESTEP_FEATURES;

/// Trainable parameters, grouped. Buffers (the sin-cos table) are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// Patch, timestep, pooled-text and context embeddings.
    pub embeddings: u64,
    /// All joint blocks.
    pub blocks: u64,
    /// Final adaLN and output projection.
    pub head: u64,
}

impl ParamCount {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.embeddings + self.blocks + self.head
    }
}

fn linear(input: u64, output: u64) -> u64 {
    input * output + output
}

/// Parameters of one joint block.
pub fn block_params(cfg: &MmditConfig, context_pre_only: bool) -> u64 {
    let d = cfg.hidden_size() as u64;
    let hidden = d * cfg.mlp_ratio as u64;
    let ff = linear(d, hidden) + linear(hidden, d);
    let qk_norm = if cfg.qk_norm {
        4 * cfg.head_dim as u64
    } else {
        0
    };
    let visual = linear(d, 6 * d) + 3 * linear(d, d) + linear(d, d) + ff;
    let text = if context_pre_only {
        linear(d, 2 * d) + 3 * linear(d, d)
    } else {
        linear(d, 6 * d) + 3 * linear(d, d) + linear(d, d) + ff
    };
    visual + text + qk_norm
}

/// Parameter count of a model built from `cfg`.
pub fn param_count(cfg: &MmditConfig) -> ParamCount {
    let d = cfg.hidden_size() as u64;
    let embeddings = linear(cfg.patch_dim() as u64, d)
        + linear(TIMESTEP_FEATURES as u64, d)
        + linear(d, d)
        + linear(cfg.pooled_dim as u64, d)
        + linear(d, d)
        + linear(cfg.context_dim as u64, d);
    let depth = cfg.depth as u64;
    let blocks = (depth - 1) * block_params(cfg, false) + block_params(cfg, true);
    let head = linear(d, 2 * d) + linear(d, cfg.patch_out_dim() as u64);
    ParamCount {
        embeddings,
        blocks,
        head,
    }
}

/// Forward FLOPs for one sample, counting 2 per multiply-add of every matmul (linear layers and
/// the attention products); normalisations, activations and softmax are left out.
/// `input` is the latent shape `[C, T, H, W]` (must be divisible by the patch), `text_tokens`
/// the number of text tokens.
pub fn forward_flops(cfg: &MmditConfig, input: [usize; 4], text_tokens: usize) -> u64 {
    let d = cfg.hidden_size() as u64;
    let [pt, ph, pw] = cfg.patch_size;
    let n = (input[1] / pt * (input[2] / ph) * (input[3] / pw)) as u64;
    let l = text_tokens as u64;
    let hidden = d * cfg.mlp_ratio as u64;
    let mm = |rows: u64, k: u64, cols: u64| 2 * rows * k * cols;

    let embed = mm(n, cfg.patch_dim() as u64, d)
        + mm(1, TIMESTEP_FEATURES as u64, d)
        + mm(1, d, d)
        + mm(1, cfg.pooled_dim as u64, d)
        + mm(1, d, d)
        + mm(l, cfg.context_dim as u64, d);
    let block = |pre_only: bool| -> u64 {
        let modulation = mm(1, d, 6 * d) + mm(1, d, if pre_only { 2 * d } else { 6 * d });
        let qkv = mm(n + l, d, 3 * d);
        let tokens = n + l;
        let attention = 2 * mm(tokens, d, tokens); // q·kᵀ and p·v over all heads
        let out = mm(n, d, d) + if pre_only { 0 } else { mm(l, d, d) };
        let ff_rows = if pre_only { n } else { n + l };
        let ff = mm(ff_rows, d, hidden) + mm(ff_rows, hidden, d);
        modulation + qkv + attention + out + ff
    };
    let depth = cfg.depth as u64;
    let blocks = (depth - 1) * block(false) + block(true);
    let head = mm(1, d, 2 * d) + mm(n, d, cfg.patch_out_dim() as u64);
    embed + blocks + head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AttentionBackend, Positions, Prediction};

    fn cfg(depth: usize) -> MmditConfig {
        MmditConfig {
            in_channels: 2,
            out_channels: 2,
            patch_size: [1, 2, 2],
            depth,
            num_heads: 2,
            head_dim: 4,
            mlp_ratio: 4,
            context_dim: 6,
            pooled_dim: 5,
            qk_norm: false,
            positions: Positions::Rope3d {
                theta: 1e4,
                axes_dim: None,
            },
            attention: AttentionBackend::Sdpa,
            prediction: Prediction::Velocity,
        }
    }

    #[test]
    fn flops_of_a_one_block_model_by_hand() {
        // D = 8, patch dim 8, N = 1·2·2 = 4 visual tokens, L = 3 text tokens, one block that is
        // context-pre-only.
        let (d, n, l, h) = (8u64, 4u64, 3u64, 32u64);
        let embed = 2 * (n * 8 * d + 256 * d + d * d + 5 * d + d * d + l * 6 * d);
        let block = 2 * (d * 6 * d + d * 2 * d) // modulation
            + 2 * (n + l) * d * 3 * d           // q, k, v for both streams
            + 2 * 2 * (n + l) * (n + l) * d     // q·kᵀ and p·v
            + 2 * n * d * d                     // visual output projection only
            + 2 * 2 * n * d * h; // visual MLP only
        let head = 2 * (d * 2 * d + n * d * 8);
        assert_eq!(
            forward_flops(&cfg(1), [2, 1, 4, 4], 3),
            embed + block + head
        );
    }

    #[test]
    fn flops_grow_linearly_with_depth_and_quadratically_with_tokens() {
        let f = |depth, frames| forward_flops(&cfg(depth), [2, frames, 4, 4], 3) as i64;
        assert_eq!(f(4, 1) - f(3, 1), f(3, 1) - f(2, 1));
        // N = 4·frames: the second difference in frames is the attention's 4·D·N² term alone:
        // depth · 4·D · 2·ΔN² with ΔN = 4.
        let second = f(2, 3) - 2 * f(2, 2) + f(2, 1);
        assert_eq!(second, 2 * 4 * 8 * 2 * 16);
    }
}
