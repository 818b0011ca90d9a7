//! One stage's estimate and one rank's share of it in a data-parallel run, under each way of
//! sharding (`[<stage>.train] shard`).

use apt_flow::train::{Precision, ShardMode};

/// One stage's memory estimate, in bytes, for one replica before any sharding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepMemory {
    /// Weights, gradients, optimizer state and EMA copies of every network the stage holds.
    pub states: u64,
    /// The optimizer-state part of `states` (what ZeRO-1 shards).
    pub optimizer: u64,
    /// Activations kept for the backward pass.
    pub activations: u64,
    /// Activations with recomputation: each block's input kept, one block's internals live.
    pub recomputed: u64,
    /// How the trained networks' part of `states` splits under `gradients` and `full`.
    pub sharding: Sharding,
}

/// The trained networks' states as sharding sees them (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sharding {
    /// fp32 master weights, fp32 gradients, optimizer state and EMA: split 1/N per rank by
    /// `gradients` and `full`.
    pub splittable: u64,
    /// The compute-precision copies of the weights and gradients an unsharded bf16 run adds
    /// (fp32 runs compute on the master weights: 0).
    pub working: u64,
    /// The trained weights and their gradients whole in compute precision: what `gradients`
    /// keeps on every rank (and `full` without recomputation, during a phase).
    pub whole: u64,
    /// The most weights and gradients `full` with recomputation holds whole at once: a block
    /// and the rest of the trained network, a block of the network it runs under no_grad,
    /// and — in APT's G phase — D's weights, which the graph through D keeps.
    pub gathered: u64,
}

/// One trained network, for [`Sharding::of`]: values trained, blocks, optimizer + EMA bytes
/// per value.
pub struct Trained {
    /// Values trained (all, or LoRA's adapters).
    pub values: u64,
    /// Transformer blocks (units of `full`).
    pub depth: usize,
    /// fp32 bytes per value kept for it: weights, gradients, optimizer slots, EMA.
    pub bytes_per_value: u64,
}

impl Trained {
    /// One unit of `full`: a block plus the rest of the network, taken as two blocks' worth
    /// (embeddings and heads are far smaller than a block in every preset).
    fn unit(&self) -> u64 {
        (self.values.saturating_mul(2) / self.depth.max(1) as u64).min(self.values)
    }
}

impl Sharding {
    /// The terms for `nets` (the first is trained in its own phase; in APT `[G, D]`) in
    /// `precision`. `graph_kept` is the values of a network held whole by an autograd graph
    /// while another trains (D in APT's G phase).
    pub fn of(nets: &[Trained], precision: Precision, graph_kept: u64) -> Sharding {
        let compute = match precision {
            Precision::Fp32 => 4,
            Precision::Bf16 => 2,
        };
        let values: u64 = nets.iter().map(|n| n.values).sum();
        let splittable = nets
            .iter()
            .map(|n| n.values.saturating_mul(n.bytes_per_value))
            .sum();
        // Per phase: the trained network's unit with gradients, the others' units without.
        let gathered = (0..nets.len())
            .map(|i| {
                let others: u64 = nets
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, n)| n.unit())
                    .sum();
                let kept = if i == 0 { graph_kept } else { 0 };
                nets[i].unit() * 2 + others.max(kept)
            })
            .max()
            .unwrap_or(0);
        Sharding {
            splittable,
            working: match precision {
                Precision::Fp32 => 0,
                Precision::Bf16 => values.saturating_mul(4),
            },
            whole: values.saturating_mul(2 * compute),
            gathered: gathered.saturating_mul(compute),
        }
    }
}

impl StepMemory {
    /// Both (saturating: absurd configs give `u64::MAX`, not an overflow).
    pub fn total(&self) -> u64 {
        self.states.saturating_add(self.activations)
    }

    /// One rank's share in a data-parallel run of `world` ranks when this estimate is for a
    /// micro-batch of `batch` clips and the rank takes `local` of them: `local/batch` of the
    /// activations (the recomputed ones with `recompute`), and of the states what `shard`
    /// leaves it — `optimizer`: `1/world` of the optimizer state; `gradients`: `1/world` of
    /// the fp32 weights, gradients, optimizer state and EMA, plus the whole weights and
    /// gradients in compute precision; `full`: the same split, whole weights only a block at a
    /// time with recomputation (frozen networks stay whole on every rank).
    pub fn per_rank(
        &self,
        batch: usize,
        local: usize,
        world: usize,
        shard: ShardMode,
        recompute: bool,
    ) -> StepMemory {
        let n = world.max(1) as u64;
        let s = self.sharding;
        let unsplit = self
            .states
            .saturating_sub(s.splittable)
            .saturating_sub(s.working);
        let split = |held: u64| unsplit + s.splittable.div_ceil(n) + held;
        let (states, optimizer) = match (shard, world > 1) {
            (_, false) | (ShardMode::None, _) => (self.states, self.optimizer),
            (ShardMode::Optimizer, _) => {
                let o = self.optimizer.div_ceil(n);
                (self.states - self.optimizer + o, o)
            }
            (ShardMode::Gradients, _) => (split(s.whole), self.optimizer.div_ceil(n)),
            (ShardMode::Full, _) => (
                split(if recompute { s.gathered } else { s.whole }),
                self.optimizer.div_ceil(n),
            ),
        };
        let scale =
            |bytes: u64| (bytes as u128 * local as u128).div_ceil(batch.max(1) as u128) as u64;
        let activations = if recompute {
            self.recomputed
        } else {
            self.activations
        };
        StepMemory {
            states,
            optimizer,
            activations: scale(activations),
            recomputed: scale(self.recomputed),
            sharding: s,
        }
    }
}
