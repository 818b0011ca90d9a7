//! Training machinery shared by every trainer (flow pre-training, distillation, and the
//! adversarial trainer): optimizers with saveable state, learning-rate schedules, gradient
//! clipping, EMA, non-finite step handling, and atomic checkpoints.

pub mod checkpoint;
pub mod ema;
pub mod guard;
pub mod optim;
pub mod schedule;

pub use checkpoint::{Loaded, Manifest, TrainState};
pub use ema::Ema;
pub use guard::NonFiniteGuard;
pub use optim::{clip_grad_norm, zero_grad, Optimizer, OptimizerConfig};
pub use schedule::{Decay, LrSchedule};
