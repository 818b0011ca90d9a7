//! Training machinery shared by every stage: the one training loop ([`Trainer`] with its
//! [`TrainStep`]s and [`Part`]s), optimizers with saveable state, learning-rate schedules,
//! gradient clipping, EMA, non-finite step handling, `metrics.jsonl`, atomic checkpoints, and
//! the collective operations of data-parallel runs.

pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod ema;
pub mod flat;
pub mod guard;
pub mod metrics;
pub mod optim;
mod parallel;
pub mod part;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use checkpoint::{Loaded, Manifest, TrainState};
pub use collective::{Collective, Shard, SingleProcess};
pub use config::TrainConfig;
pub use ema::Ema;
pub use flat::{FlatParams, Precision};
pub use guard::NonFiniteGuard;
pub use metrics::{Logged, MetricLine, MetricsLog, StepLog};
pub use optim::{clip_grad_norm, zero_grad, Optimizer, OptimizerConfig};
pub use part::{copy_weights, freeze_variables, Part};
pub use schedule::{Decay, LrSchedule};
pub use step::{backward_scaled, Finish, Observer, TrainStep};
pub use trainer::Trainer;
