//! Claiming a run directory: every check runs before anything in it changes — the model
//! against the data, the machine and the disk ([`crate::preflight`]: device, data set, imported
//! teacher and VAE), memory, the lock, the config of record (`config.toml`) against the new
//! one, the exports each stage starts from, checkpoints against `--resume` — and only then is
//! the config of record written and stale temporary files of dead processes removed. Ranks of
//! a data-parallel run first agree on their command and config.

use std::path::Path;

use apt_flow::train::Collective;
use tch::Tensor;

use crate::config::RunConfig;
use crate::error::{config_error, io_error, PipelineError, Result};
use crate::lock::RunLock;
use crate::memory;
use crate::run_dir::{RunDir, Stage};

/// Which stages `apt train` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every configured stage in order, then the evaluation and report.
    All,
    /// One stage (`Apt` includes the image stage before it, when configured).
    One(Stage),
}

/// The stages `selection` runs for `config`, in order. A selected stage whose section is
/// missing is an error naming the section.
pub fn planned_stages(config: &RunConfig, selection: Selection) -> Result<Vec<Stage>> {
    let image = config.apt.as_ref().is_some_and(|a| a.image.is_some());
    let configured = |s: Stage| match s {
        Stage::Vae => config
            .vae
            .as_ref()
            .is_some_and(|v| v.import_from().is_none()),
        Stage::Pretrain => config.pretrain.is_some() || config.model.import_from().is_some(),
        Stage::Distill => config.distill.is_some(),
        Stage::Consistency => config.consistency.is_some(),
        Stage::AptImage => image,
        Stage::Apt => config.apt.is_some(),
    };
    let stages: Vec<Stage> = match selection {
        Selection::All => Stage::ALL.into_iter().filter(|&s| configured(s)).collect(),
        Selection::One(Stage::Apt | Stage::AptImage) if config.apt.is_some() => {
            [Stage::AptImage, Stage::Apt]
                .into_iter()
                .filter(|&s| configured(s))
                .collect()
        }
        Selection::One(s) if configured(s) => vec![s],
        Selection::One(s) => {
            return Err(config_error(
                s.section(),
                format!("section missing: the config has no [{}]", s.section()),
            ))
        }
    };
    if stages.is_empty() {
        return Err(config_error(
            "pretrain",
            "no stage is configured ([vae], [pretrain], [distill], [consistency] or [apt])",
        ));
    }
    Ok(stages)
}

/// Whether `stages` of `config` can train data-parallel on `world` ranks: every stage's
/// (global) batch splits into `world` equal shards. What `apt train` and its dry run check.
pub fn check_world_size(config: &RunConfig, stages: &[Stage], world: usize) -> Result<()> {
    if world == 0 {
        return Err(config_error("world size", "must be at least 1"));
    }
    for &stage in stages {
        if let Some(train) = config.train_config(stage) {
            if !train.batch_size.is_multiple_of(world) {
                return Err(config_error(
                    &format!("{}.train.batch_size", stage.section()),
                    format!(
                        "{} does not split into {world} equal shards (one per rank): the \
                         batch is global, so give a multiple of {world}",
                        train.batch_size
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A run directory claimed by this process: checked, locked, its config of record written.
#[derive(Debug)]
pub struct OpenRun {
    /// The run's config.
    pub config: RunConfig,
    /// Its files.
    pub dir: RunDir,
    /// This process created the directory.
    created: bool,
    /// Held by the process that claimed the directory (rank 0 of a data-parallel run).
    _lock: Option<RunLock>,
}

impl OpenRun {
    /// Claims `config.out` for training `stages` (from [`planned_stages`]; `explicit` when
    /// one stage was asked for by name). With `resume`, stages continue from their newest
    /// checkpoint (finished ones are skipped, see [`skips_as_finished`]); without, a stage that
    /// already holds checkpoints is an error, and so is resuming when none of the stages has
    /// anything to resume. A key that differs from the run's config of record is refused
    /// unless no stage trained with it yet, or it only lengthens a stage this run continues.
    /// Nothing in the directory changes unless every check passes.
    pub fn for_training(
        config: RunConfig,
        stages: &[Stage],
        resume: bool,
        explicit: bool,
    ) -> Result<Self> {
        config.model()?;
        crate::preflight::check_run(&config, stages)?;
        if !explicit {
            crate::preflight::check_report(&config)?;
        }
        memory::check_fits(&config, stages)?;
        let dir = RunDir::new(&config.out);
        let created = !dir.root().exists();
        std::fs::create_dir_all(dir.root()).map_err(io_error(dir.root()))?;
        let claimed = RunLock::acquire(&dir).and_then(|lock| {
            let config = check_against_the_run(config, &dir, stages, resume, explicit)?;
            crate::run_dir::write_atomically(
                &dir.config_file(),
                config.to_toml_string().as_bytes(),
            )?;
            crate::stale::remove_stale_temp_files(dir.root());
            let cache = config.text_cache();
            if !cache.starts_with(dir.root()) {
                crate::stale::remove_stale_temp_files(&cache);
            }
            Ok((lock, config))
        });
        match claimed {
            Ok((lock, config)) => Ok(Self {
                config,
                dir,
                created,
                _lock: Some(lock),
            }),
            Err(e) => {
                if created {
                    // Only the lock file is in it: leave no trace of a refused run.
                    let _ = std::fs::remove_dir_all(dir.root());
                }
                Err(e)
            }
        }
    }

    /// [`for_training`](Self::for_training) for every rank of `world`: rank 0 claims the
    /// directory (checks, lock, `config.toml`) and tells the others whether it could; they then
    /// open it without a lock (they write nothing in it). Every rank gets rank 0's verdict.
    /// `command` is how this rank was started (its arguments): every rank must have been
    /// started with the same command and resolve the same config, or all refuse at once
    /// (ranks running different stages would wait on each other forever).
    pub fn for_training_in(
        world: &dyn Collective,
        config: RunConfig,
        stages: &[Stage],
        resume: bool,
        explicit: bool,
        command: &str,
    ) -> Result<Self> {
        if world.world_size() == 1 {
            return Self::for_training(config, stages, resume, explicit);
        }
        let text = format!(
            "{command}\n{stages:?} resume={resume} explicit={explicit}\n{}",
            config.to_toml_string()
        );
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let all = Vec::<i64>::try_from(world.all_gather(&Tensor::from_slice(&[hash as i64]))?)
            .map_err(apt_flow::FlowError::from)?;
        if let Some(rank) = all.iter().position(|&h| h != hash as i64) {
            return Err(PipelineError::Flow(apt_flow::FlowError::Collective(
                format!(
                    "rank {rank} was started with another command or config than rank {} \
                     (arguments, stage, --resume, the config after --set, or another build of \
                     the binary): start every rank with the same command and binary",
                    world.rank()
                ),
            )));
        }
        check_world_size(&config, stages, world.world_size())?;
        let claimed = world
            .is_main()
            .then(|| Self::for_training(config.clone(), stages, resume, explicit));
        let ok = i64::from(matches!(claimed, Some(Ok(_))));
        let mut verdict = Tensor::from_slice(&[ok]);
        world.broadcast(&mut verdict, 0)?;
        match claimed {
            Some(result) => result,
            None if verdict.int64_value(&[0]) == 1 => Ok(Self {
                dir: RunDir::new(&config.out),
                config,
                created: false,
                _lock: None,
            }),
            None => Err(PipelineError::Flow(apt_flow::FlowError::Collective(
                format!(
                    "rank 0 refused to train in {} (its message says why)",
                    config.out.display()
                ),
            ))),
        }
    }

    /// Claims an existing run directory to evaluate it (`apt eval`): locked, its config read
    /// from `config.toml` (with `out` set to `dir`, which may have moved).
    pub fn for_evaluation(dir: &Path) -> Result<Self> {
        let run = RunDir::new(dir);
        if !run.config_file().is_file() {
            return Err(PipelineError::File {
                path: dir.to_path_buf(),
                reason: "is not a run directory (no config.toml)".into(),
            });
        }
        let lock = RunLock::acquire(&run)?;
        let mut config = RunConfig::from_file(&run.config_file())?;
        config.out = dir.to_path_buf();
        Ok(Self {
            config,
            dir: run,
            created: false,
            _lock: Some(lock),
        })
    }

    /// After a run that failed: removes the run directory when this process created it and no
    /// stage left anything in it (a checkpoint, pairs, an export or a report), so that a run
    /// refused by a late check leaves nothing on disk, as one refused early does. Returns
    /// whether it did.
    pub fn discard_if_untouched(&self) -> bool {
        if !self.created || Stage::ALL.iter().any(|&s| self.dir.has_state(s)) {
            return false;
        }
        std::fs::remove_dir_all(self.dir.root()).is_ok()
    }
}

/// Whether `--resume` skips `stages[i]` because it finished earlier: every finished stage is
/// skipped, except the last one of an explicit selection (`apt train --stage NAME`), which
/// continues from its final checkpoint (e.g. to train it longer).
pub fn skips_as_finished(
    dir: &RunDir,
    stages: &[Stage],
    i: usize,
    resume: bool,
    explicit: bool,
) -> bool {
    let selected = explicit && i + 1 == stages.len();
    resume && !selected && dir.is_finished(stages[i])
}

/// Keys that may differ from the run's config of record whatever state the run is in: where
/// it runs and how it is reported.
fn always_free(key: &str) -> bool {
    ["out", "device", "threads", "text.cache"].contains(&key)
        || key.starts_with("report.")
        || key.starts_with("dist.")
}

/// Keys of a stage's section that may differ after the stage has started: how long it trains,
/// how it splits its state over the ranks (checkpoints are whole), and how it checkpoints,
/// previews and evaluates — not what it has trained so far.
fn free_in_a_started_stage(rest: &str) -> bool {
    [
        "train.steps",
        "train.shard",
        "train.shard_optimizer",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.max_nonfinite",
        "train.preview_every",
        "image.steps",
    ]
    .contains(&rest)
        || rest.starts_with("eval.")
}

/// The stages whose exported models `stage` starts from.
fn prerequisites(config: &RunConfig, stage: Stage) -> Vec<Stage> {
    let apt = config.apt.as_ref();
    let student = match apt.map(|a| a.generator_init) {
        Some(crate::config::GeneratorInit::Consistency) => Stage::Consistency,
        _ => Stage::Distill,
    };
    let mut stages = match stage {
        Stage::Vae | Stage::Pretrain => vec![],
        Stage::Distill | Stage::Consistency => vec![Stage::Pretrain],
        Stage::AptImage => vec![Stage::Pretrain, student],
        Stage::Apt if apt.is_some_and(|a| a.image.is_some()) => {
            vec![Stage::Pretrain, Stage::AptImage]
        }
        Stage::Apt => vec![Stage::Pretrain, student],
    };
    // In latent space every model stage needs the VAE this run trains.
    let trains_vae = config
        .vae
        .as_ref()
        .is_some_and(|v| v.import_from().is_none());
    if stage != Stage::Vae && trains_vae {
        stages.insert(0, Stage::Vae);
    }
    stages
}

/// Checks `config` against the run's config of record and its state; returns the config to
/// record: `config`, except that a stage this command does not select keeps the values it
/// trained with (a key it may change only while it trains, such as its step count).
fn check_against_the_run(
    config: RunConfig,
    dir: &RunDir,
    stages: &[Stage],
    resume: bool,
    explicit: bool,
) -> Result<RunConfig> {
    let mut config = config;
    if dir.config_file().is_file() {
        let saved = RunConfig::from_file(&dir.config_file()).map_err(|e| PipelineError::File {
            path: dir.config_file(),
            reason: format!(
                "the run's config of record does not load ({e}); start a new run directory"
            ),
        })?;
        let position = |stage: Stage| stages.iter().position(|&s| s == stage);
        let mut refused = Vec::new();
        let mut skipped_finished = None;
        let mut kept = Vec::new();
        for c in crate::config::changed_keys(&saved, &config) {
            if always_free(&c.key) {
                continue;
            }
            let (section, rest) = c.key.split_once('.').unwrap_or((&c.key, ""));
            let owners: Vec<Stage> = Stage::ALL
                .into_iter()
                .filter(|s| s.section() == section && dir.has_state(*s))
                .collect();
            if Stage::ALL.iter().all(|s| s.section() != section) {
                // Shared keys (seed, model, data, text) bind once any stage has state.
                if Stage::ALL.iter().any(|&s| dir.has_state(s)) {
                    refused.push(c.to_string());
                }
                continue;
            }
            if owners.is_empty() {
                // An imported VAE (`vae.from`) leaves no state of its own, but every later stage
                // trained in its latent space: its keys bind like the shared ones.
                if section == "vae" && Stage::ALL.iter().any(|&s| dir.has_state(s)) {
                    refused.push(c.to_string());
                }
                continue;
            }
            if !free_in_a_started_stage(rest) {
                refused.push(c.to_string());
                continue;
            }
            // Free while the stage trains; a stage this command skips keeps its value.
            for stage in owners {
                match position(stage) {
                    Some(i) if !skips_as_finished(dir, stages, i, resume, explicit) => {}
                    Some(_) => {
                        skipped_finished.get_or_insert(stage);
                        refused.push(c.to_string());
                    }
                    None => {
                        tracing::info!(
                            key = %c.key,
                            "kept as recorded: this command does not train `{stage}`"
                        );
                        kept.push(c.key.clone());
                    }
                }
            }
        }
        if !refused.is_empty() {
            let hint = match skipped_finished {
                Some(stage) => format!(
                    "`{stage}` finished with the recorded value and --resume skips finished \
                     stages: continue it with `--stage {stage} --resume`, or use a new `out` \
                     directory"
                ),
                None => "Use the run's own config (its config.toml), a new `out` directory, \
                         or `--fresh` to move this run aside and start over"
                    .to_string(),
            };
            return Err(PipelineError::File {
                path: dir.config_file(),
                reason: format!(
                    "this run was trained with a different config: {}. {hint}",
                    refused.join("; ")
                ),
            });
        }
        kept.dedup();
        if !kept.is_empty() {
            config = crate::config::with_values_of(&config, &saved, &kept);
        }
    }
    for (i, &stage) in stages.iter().enumerate() {
        for needed in prerequisites(&config, stage) {
            if !stages[..i].contains(&needed) && !dir.export_path(needed).is_file() {
                return Err(PipelineError::File {
                    path: dir.export_path(needed),
                    reason: format!(
                        "missing: run the `{needed}` stage first (`{stage}` starts from it)"
                    ),
                });
            }
        }
        if !resume && dir.has_checkpoints(stage) {
            return Err(PipelineError::File {
                path: dir.checkpoints(stage),
                reason: "already holds checkpoints: pass --resume to continue, or --fresh to \
                         move the run aside and start over"
                    .into(),
            });
        }
    }
    if resume && !stages.iter().any(|&s| dir.has_state(s)) {
        let path = match stages {
            [one] => dir.stage(*one),
            _ => dir.root().to_path_buf(),
        };
        return Err(PipelineError::File {
            path,
            reason: "has no checkpoint to resume from: run without --resume to start".into(),
        });
    }
    Ok(config)
}
