//! Evaluation on the moving-shapes benchmark: one generator's text alignment, sharpness,
//! temporal consistency, periodicity and set-level metrics ([`alignment`], [`metrics`]), every
//! generator of a run on the same prompts and noise ([`run`]), and paired bootstrap intervals
//! ([`bootstrap`]).

pub mod alignment;
pub mod bootstrap;
pub mod metrics;
pub mod run;

pub use alignment::{
    patch_grid, score_clips, shapes_alignment, summarise, AlignmentReport, ScoredClips,
};
pub use bootstrap::{paired_bootstrap, Interval, ModelIntervals};
pub use run::{evaluate_run, side_by_side, EvaluatedModel, RunModels, SideBySide};
