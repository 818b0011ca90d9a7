//! # apt-pipeline
//!
//! The layer between the method crates (`apt-flow`, `apt-gan`) and the `apt` command line:
//! one typed run config ([`config::RunConfig`], every section typed, validated once), the run
//! directory and every file name in it ([`run_dir::RunDir`], exports with integrity records),
//! the lock and checks that claim a directory before anything in it changes
//! ([`session::OpenRun`]), the stage drivers ([`stages`]), the data and text sources the
//! method crates' traits are implemented with ([`data`], [`text`]), and the run's evaluation
//! and report ([`eval`], [`report`]); ablation studies of the adversarial stage over
//! variants and seeds ([`study`]).

#![warn(missing_docs)]

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
mod full_run;
pub mod latent;
pub mod lock;
pub mod memory;
pub mod prefetch;
pub mod preflight;
pub mod report;
pub mod run_dir;
pub mod session;
pub mod stages;
pub mod stale;
pub mod study;
pub mod text;
pub mod wan_dir;

pub use config::RunConfig;
pub use error::{PipelineError, Result};
pub use full_run::run_all;
pub use run_dir::{RunDir, Stage};
pub use session::{check_world_size, planned_stages, OpenRun, Selection};
pub use stages::{run_stage, run_stages, Outcome, Progress, StageReport, StageRun};

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
