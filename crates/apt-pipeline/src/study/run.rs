//! Training a study: the shared teacher and distilled init once (or reused), each further
//! init's student from the shared teacher, then every variant × seed's adversarial stage in its
//! own run directory, whose stage directories of the init are links to the shared (or the
//! further init's) ones. Finished runs are skipped and interrupted ones resume, so running a
//! study again continues it.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use apt_flow::RunEnd;

use super::Study;
use crate::config::{changed_keys, GeneratorInit, RunConfig};
use crate::error::{config_error, io_error, PipelineError, Result};
use crate::run_dir::{RunDir, Stage};
use crate::session::{planned_stages, OpenRun, Selection};
use crate::stages::{run_stages, Progress, StageRun};

/// Who follows a study: the stages' progress, and which run is next.
pub trait StudyProgress: Progress {
    /// Run `index` of `total` (`label`: `shared`, `init <name>` or `<variant> seed <s>`;
    /// `config`: its run config) starts or is skipped.
    fn run_start(
        &mut self,
        _label: &str,
        _config: &RunConfig,
        _index: usize,
        _total: usize,
        _skipped: bool,
    ) {
    }
}

impl StudyProgress for () {}

/// The stages of the shared init: the teacher and the student that starts G.
pub fn init_stages(config: &RunConfig) -> Vec<Stage> {
    let student = match config.apt.as_ref().map(|a| a.generator_init) {
        Some(GeneratorInit::Consistency) => Stage::Consistency,
        _ => Stage::Distill,
    };
    vec![Stage::Pretrain, student]
}

/// Trains whatever the study still lacks: the shared init, then each variant × seed. Returns
/// [`RunEnd::Stopped`] when `stop` was raised (the current run checkpointed).
pub fn run_study(
    study: &Study,
    progress: &mut dyn StudyProgress,
    stop: Arc<AtomicBool>,
) -> Result<RunEnd> {
    let total = study.runs.len() + study.inits.len() + 1;
    if train_shared(study, progress, stop.clone())? == RunEnd::Stopped {
        return Ok(RunEnd::Stopped);
    }
    let shared = RunDir::new(&study.shared.out);
    for (k, init) in study.inits.iter().enumerate() {
        let cfg = &init.config;
        let dir = RunDir::new(&cfg.out);
        let student = init_stages(cfg)[1];
        let label = format!("init {}", init.name);
        if dir.is_finished(student) {
            check_reused(&dir, cfg, |k| k.starts_with("apt."))?;
            progress.run_start(&label, cfg, k + 2, total, true);
            continue;
        }
        progress.run_start(&label, cfg, k + 2, total, false);
        std::fs::create_dir_all(dir.root()).map_err(io_error(dir.root()))?;
        link_stage(&shared, &dir, Stage::Pretrain)?;
        if run(cfg, &[student], progress, stop.clone())? == RunEnd::Stopped {
            return Ok(RunEnd::Stopped);
        }
    }
    for (i, r) in study.runs.iter().enumerate() {
        let (cfg, index) = (&r.config, i + study.inits.len() + 2);
        let dir = RunDir::new(&cfg.out);
        let label = format!("{} seed {}", r.variant, r.seed);
        if dir.is_finished(Stage::Apt) {
            check_reused(&dir, cfg, |_| false)?;
            progress.run_start(&label, cfg, index, total, true);
            continue;
        }
        progress.run_start(&label, cfg, index, total, false);
        std::fs::create_dir_all(dir.root()).map_err(io_error(dir.root()))?;
        let from = match r.init {
            Some(k) => RunDir::new(&study.inits[k].config.out),
            None => RunDir::new(&study.shared.out),
        };
        link_stage(&shared, &dir, Stage::Pretrain)?;
        link_stage(&from, &dir, init_stages(cfg)[1])?;
        let stages = planned_stages(cfg, Selection::One(Stage::Apt))?;
        if run(cfg, &stages, progress, stop.clone())? == RunEnd::Stopped {
            return Ok(RunEnd::Stopped);
        }
    }
    Ok(RunEnd::Completed)
}

/// The shared init: reused when `init` names a run (its exports must exist), else trained
/// (or resumed) into `<out>/shared`.
fn train_shared(
    study: &Study,
    progress: &mut dyn StudyProgress,
    stop: Arc<AtomicBool>,
) -> Result<RunEnd> {
    let total = study.runs.len() + study.inits.len() + 1;
    let dir = RunDir::new(&study.shared.out);
    let needed = init_stages(&study.shared);
    let missing: Vec<Stage> = needed
        .iter()
        .copied()
        .filter(|&s| !dir.is_finished(s))
        .collect();
    if study.config.init.is_some() {
        // The init's own adversarial stage, if it ran one, is not what the study reuses.
        check_reused(&dir, &study.shared, |k| k.starts_with("apt."))?;
        if let Some(&stage) = missing.first() {
            return Err(PipelineError::File {
                path: dir.stage(stage),
                reason: format!(
                    "the study's `init` run has not finished its `{stage}` stage (no report.json)"
                ),
            });
        }
    }
    progress.run_start("shared", &study.shared, 1, total, missing.is_empty());
    if missing.is_empty() {
        return Ok(RunEnd::Completed);
    }
    run(&study.shared, &missing, progress, stop)
}

/// A finished run (or the `init` run) is reused only when it was trained with the config the
/// study gives it now: its `config.toml` of record against `config`, except where the key is
/// `free` or only says where things go or how they are evaluated (`out`, `text.cache`,
/// `device`, `threads`, `report.*`). Anything else is an error naming the key and the run.
fn check_reused(dir: &RunDir, config: &RunConfig, free: impl Fn(&str) -> bool) -> Result<()> {
    let recorded = RunConfig::from_file(&dir.config_file())?;
    let where_or_how = |k: &str| {
        matches!(k, "out" | "text.cache" | "device" | "threads") || k.starts_with("report.")
    };
    match changed_keys(&recorded, config)
        .into_iter()
        .find(|c| !where_or_how(&c.key) && !free(&c.key))
    {
        None => Ok(()),
        Some(c) => Err(config_error(
            &c.key,
            format!(
                "differs from what the finished run {} was trained with ({c}): the study would \
                 reuse it as if trained with the study's config; remove that run directory to \
                 train it again, or restore the key",
                dir.root().display()
            ),
        )),
    }
}

/// Claims `config.out` and runs `stages` in it, resuming any that has checkpoints.
fn run(
    config: &RunConfig,
    stages: &[Stage],
    progress: &mut dyn StudyProgress,
    stop: Arc<AtomicBool>,
) -> Result<RunEnd> {
    let dir = RunDir::new(&config.out);
    let resume = stages.iter().any(|&s| dir.has_checkpoints(s));
    let open = OpenRun::for_training(config.clone(), stages, resume, false)?;
    let mut ctx = StageRun {
        world: std::rc::Rc::new(apt_flow::train::SingleProcess),
        config: &open.config,
        dir: &open.dir,
        resume,
        stop,
        progress,
    };
    run_stages(&mut ctx, stages, false)
}

/// Makes `run`'s directory of `stage` a link to the shared one (nothing to do when it exists).
fn link_stage(shared: &RunDir, run: &RunDir, stage: Stage) -> Result<()> {
    let link = run.stage(stage);
    if link.exists() {
        return Ok(());
    }
    let target = std::path::absolute(shared.stage(stage)).map_err(io_error(&link))?;
    symlink_dir(&target, &link).map_err(io_error(&link))
}

#[cfg(unix)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink_dir(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}
