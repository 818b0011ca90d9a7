//! Evaluation on the moving-shapes benchmark: one generator's text alignment, sharpness,
//! temporal consistency, periodicity and set-level metrics ([`alignment`], [`metrics`]), every
//! generator of a run on the same prompts and noise ([`run`]), and paired bootstrap intervals
//! ([`bootstrap`]). On any data: the Fréchet distance on the frozen teacher's features
//! ([`teacher_fd`], [`any_data`]).

pub mod alignment;
pub mod any_data;
pub mod bootstrap;
pub mod fvd;
pub mod metrics;
pub mod run;
pub mod teacher_fd;

pub use alignment::{
    patch_grid, score_clips, shapes_alignment, summarise, AlignmentReport, ScoredClips,
};
pub use any_data::{evaluate_any_data, TeacherFdReport, TeacherFdRow};
pub use bootstrap::{paired_bootstrap, Interval, IntervalMethod, ModelIntervals};
pub use run::{evaluate_run, side_by_side, EvaluatedModel, RunModels, SideBySide};
