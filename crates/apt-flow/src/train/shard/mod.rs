//! Sharded data parallel (ZeRO-2 and ZeRO-3, PyTorch FSDP's `SHARD_GRAD_OP` and
//! `FULL_SHARD`): each of N ranks keeps 1/N of a part's fp32 master weights, gradients,
//! optimizer state and EMA.
//!
//! The trainable variables are grouped into *units*: one per transformer block (the variables
//! under `…blocks.<i>.`) and one for the rest (embeddings, heads). Every unit is a flat buffer
//! padded to a multiple of N; rank `r` keeps elements `[r·s, (r + 1)·s)` of each (its *piece*,
//! `s = ⌈n/N⌉`), and its master weights, gradients, optimizer state and EMA are those pieces
//! laid end to end. Before a unit is used, its weights are all-gathered (cast to the compute
//! precision first); after the backward pass its gradients are reduce-scattered into the
//! pieces (the mean over ranks) and, under `full`, the whole weights are freed again:
//!
//! * `gradients` (ZeRO-2): every unit stays gathered; gradients are reduce-scattered after
//!   every micro-batch and the weights re-gathered after the optimizer step.
//! * `full` (ZeRO-3): the rest unit is gathered for a phase; a block is gathered just before it
//!   runs and freed right after, unless its output is part of an autograd graph (then after the
//!   phase). With activation recomputation (`recompute = true`) every block is gathered for the
//!   forward and again for its recomputed backward, so one block's weights are whole at a time
//!   (two while the next block's gather runs ahead, see `prefetch.rs`).
//!
//! The optimizer and the EMA are elementwise, so they update the pieces exactly as they would
//! the whole buffers (the padding stays zero). The models call the gather hooks through
//! [`apt_mmdit::sharding`].

mod params;
mod part;
mod pieces;
mod prefetch;

use serde::{Deserialize, Serialize};

pub use params::ShardedParams;
pub(crate) use part::Sharded;

use crate::error::FlowError;

/// What a sharded part held, for logs and tests: this rank's piece and the most weights it had
/// whole at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Trainable elements of the part.
    pub whole_elements: i64,
    /// Elements of this rank's pieces (master weights; gradients, each optimizer slot and the
    /// EMA hold as many).
    pub local_elements: i64,
    /// The most trainable elements gathered whole at one time.
    pub peak_gathered: i64,
    /// Unit gathers (all-gathers of weights) so far.
    pub gathers: u64,
}

impl ShardStats {
    /// Both periods' figures: the larger sizes and peak, the gathers added.
    pub fn merge(self, other: ShardStats) -> ShardStats {
        ShardStats {
            whole_elements: self.whole_elements.max(other.whole_elements),
            local_elements: self.local_elements.max(other.local_elements),
            peak_gathered: self.peak_gathered.max(other.peak_gathered),
            gathers: self.gathers + other.gathers,
        }
    }
}

/// What a data-parallel run splits over its ranks (`[<stage>.train] shard`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardMode {
    /// Every rank holds everything (plain data parallel).
    #[default]
    None,
    /// ZeRO-1: each rank keeps the optimizer state of about 1/N of the variables (whole
    /// variables) and sends its updated weights to the others.
    Optimizer,
    /// ZeRO-2: fp32 master weights, gradients, optimizer state and EMA split 1/N per rank; the
    /// weights the model computes with stay whole.
    Gradients,
    /// ZeRO-3: everything split, the weights gathered block by block just before use.
    Full,
}

impl ShardMode {
    /// `none`.
    pub fn is_none(&self) -> bool {
        *self == ShardMode::None
    }

    /// Whether the weights are split into pieces (`gradients`, `full`).
    pub fn splits_weights(&self) -> bool {
        matches!(self, ShardMode::Gradients | ShardMode::Full)
    }
}

impl std::fmt::Display for ShardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardMode::None => "none",
            ShardMode::Optimizer => "optimizer",
            ShardMode::Gradients => "gradients",
            ShardMode::Full => "full",
        })
    }
}

/// An error for a part whose weights are split when whole ones are needed.
pub(crate) fn split_error(part: &str) -> FlowError {
    FlowError::Collective(format!(
        "the weights of `{part}` are split over the ranks (shard = gradients or full): gather \
         them first"
    ))
}

#[cfg(test)]
mod tests {
    use super::params::block_prefix;
    use super::*;
    use crate::train::{OptimizerConfig, TrainConfig};

    #[test]
    fn units_are_the_blocks_of_either_family_and_the_rest() {
        let unit = |n: &str| block_prefix(n);
        assert_eq!(
            unit("transformer_blocks.12.attn.to_q.weight").as_deref(),
            Some("transformer_blocks.12")
        );
        assert_eq!(
            unit("backbone.blocks.3.attn1.to_q.lora_A.weight").as_deref(),
            Some("backbone.blocks.3")
        );
        assert_eq!(unit("proj_out.weight"), None);
        assert_eq!(unit("heads.0.blocks"), None);
    }

    #[test]
    fn the_old_spelling_means_optimizer_and_contradicting_it_is_an_error() {
        let adamw = OptimizerConfig::Adamw {
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut c = TrainConfig::new(10, 4, adamw);
        c.shard_optimizer = true;
        assert_eq!(c.shard_mode(), ShardMode::Optimizer);
        c.validate("apt.train").unwrap();
        c.shard = ShardMode::Full;
        let e = c.validate("apt.train").unwrap_err().to_string();
        assert!(e.contains("apt.train.shard_optimizer"), "{e}");
        let parsed: TrainConfig = serde_json::from_str(
            r#"{"steps": 1, "batch_size": 2, "shard": "gradients",
                "optimizer": {"kind": "adamw", "lr": 1e-4}}"#,
        )
        .unwrap();
        assert_eq!(parsed.shard_mode(), ShardMode::Gradients);
    }
}
