//! Evaluation on the moving-shapes benchmark: one generator's text alignment, sharpness,
//! temporal consistency and set-level metrics ([`alignment`], [`metrics`]), and every
//! generator of a run on the same prompts and noise ([`run`]).

pub mod alignment;
pub mod metrics;
pub mod run;

pub use alignment::{shapes_alignment, AlignmentReport};
pub use run::{evaluate_run, side_by_side, EvaluatedModel, RunModels, SideBySide};
