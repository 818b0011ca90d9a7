//! The whole run (`apt train --stage all`): every configured stage, then the evaluation and
//! `report.md`. Above both [`crate::stages`] and [`crate::report`], which know nothing of each
//! other's drivers.

use std::path::PathBuf;

use apt_flow::RunEnd;

use crate::error::Result;
use crate::report::{evaluate_and_write, RunMetrics};
use crate::run_dir::Stage;
use crate::stages::{run_stages, StageRun};

/// `--stage all`: every stage in `stages` (finished ones skipped when resuming), then the
/// run's evaluation and report (rank 0 only). `None` when stopped (a stage at a checkpoint, or
/// the evaluation before writing anything), and on the other ranks of a data-parallel run.
pub fn run_all(ctx: &mut StageRun, stages: &[Stage]) -> Result<Option<(PathBuf, RunMetrics)>> {
    if run_stages(ctx, stages, false)? == RunEnd::Stopped {
        return Ok(None);
    }
    if !ctx.is_main() {
        return Ok(None);
    }
    let progress = &mut *ctx.progress;
    match evaluate_and_write(ctx.config, ctx.dir, &ctx.stop, |done, total, name| {
        progress.evaluated(done, total, name)
    }) {
        Ok(written) => Ok(Some(written)),
        Err(e) if e.is_interrupted() => Ok(None),
        Err(e) => Err(e),
    }
}
