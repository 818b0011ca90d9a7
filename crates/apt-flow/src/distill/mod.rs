//! Stage 2: distilling the multi-step CFG teacher into a one-step generator.
//!
//! * [`pairs`], **deterministic** (the source article's method): the teacher's N-step CFG sampler
//!   maps noise and caption `(z, c)` to `x_teacher`; the student starts from the teacher's
//!   weights and learns `z − Ĝ(z, c, 1) ≈ x_teacher` (MSE).
//! * [`consistency`] (the paper's method): the student is an x0-predictor
//!   `f(x_t, t) = x_t − t·v(x_t, t)` (so `f(x, 0) = x`); the target comes from one teacher CFG
//!   Euler step `t_{n+1} → t_n` followed by the stop-gradient (or EMA) student at `t_n`, on a
//!   shifted grid of N points; MSE.

pub mod consistency;
pub mod pairs;

pub use consistency::{ConsistencyConfig, ConsistencyStep, ConsistencyTarget};
pub use pairs::{PairDistillStep, Pairs};
