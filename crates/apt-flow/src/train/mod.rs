//! Training machinery shared by every stage: the one training loop ([`Trainer`] with its
//! [`TrainStep`]s and [`Part`]s), optimizers with saveable state, learning-rate schedules,
//! gradient clipping, EMA, non-finite step handling, `metrics.jsonl`, atomic checkpoints, and
//! the collective operations of data-parallel runs.

pub mod checkpoint;
pub mod checkpoint_shards;
pub mod collective;
pub mod config;
pub mod ema;
pub mod flat;
pub mod grad;
pub mod guard;
pub mod metrics;
pub mod optim;
mod parallel;
pub mod part;
pub mod precision;
pub mod resident;
pub mod schedule;
pub mod shard;
pub mod step;
pub mod trainer;

pub use checkpoint::{CheckpointManifest, LoadedCheckpoint, TrainState};
pub use collective::{Collective, Pending, Shard, SingleProcess};
pub use config::TrainConfig;
pub use ema::Ema;
pub use flat::FlatParams;
pub use grad::{clip_grad_norm, zero_grad};
pub use guard::NonFiniteGuard;
pub use metrics::{Logged, MetricLine, MetricsLog, StepLog};
pub use optim::{Optimizer, OptimizerConfig};
pub use part::{copy_weights, freeze_variables, Part};
pub use precision::Precision;
pub use schedule::{Decay, LrSchedule};
pub use shard::{ShardMode, ShardStats, ShardedParams};
pub use step::{backward_scaled, Observer, RunEnd, TrainStep};
pub use trainer::Trainer;
