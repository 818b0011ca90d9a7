//! What a run is checked for before anything of it is written: beyond the config's own
//! validation ([`RunConfig::validate`]), the things that need the machine or the disk — the
//! device exists, the data set opens and fills a batch of every stage, an imported teacher or
//! VAE is what the run needs. [`crate::OpenRun`] runs these before it creates or changes the
//! run directory, so a refused run leaves nothing behind; a check a stage would otherwise
//! make after hours of earlier stages fails in seconds.

use std::path::Path;

use apt_data::Dataset;
use tch::Device;

use crate::config::RunConfig;
use crate::data::DataConfig;
use crate::error::{config_error, PipelineError, Result};
use crate::run_dir::Stage;
use crate::wan_dir::WanPipelineDir;
use apt_data::text::Umt5TextEncoder;

/// That `device` exists on this machine (`key`: the setting or option that named it).
pub fn check_device(device: Device, key: &str) -> Result<()> {
    let Device::Cuda(index) = device else {
        return Ok(());
    };
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    if index < count {
        return Ok(());
    }
    let has = match count {
        0 => "libtorch sees no CUDA device on this machine".to_string(),
        1 => "this machine has 1 CUDA device (cuda:0)".to_string(),
        n => format!(
            "this machine has {n} CUDA devices (cuda:0 … cuda:{})",
            n - 1
        ),
    };
    Err(config_error(
        key,
        format!("is cuda:{index}, but {has}: use \"cpu\" or an existing device"),
    ))
}

/// Every check of `config` for training `stages` that can run before training; what is
/// legal but likely a mistake is logged as a warning ([`warnings`]).
pub fn check_run(config: &RunConfig, stages: &[Stage]) -> Result<()> {
    for warning in warnings(config, stages) {
        tracing::warn!("{warning}");
    }
    check_device(config.device()?, "device")?;
    check_data(config, stages)?;
    if stages.contains(&Stage::Distill) {
        if let Some(distill) = &config.distill {
            crate::stages::distill::check_prompts(config, distill)?;
        }
    }
    if let Some(dir) = config.wan_pipeline()? {
        check_wan_pipeline(config, &dir)?;
    }
    if stages.contains(&Stage::Pretrain) {
        if let Some(from) = config.pretrain.as_ref().and_then(|p| p.import_from()) {
            crate::stages::pretrain::check_import(config, from)?;
        }
    }
    if let Some(dir) = config.vae.as_ref().and_then(|v| v.import_from()) {
        check_vae_dir(dir)?;
    }
    Ok(())
}

/// A Wan pipeline directory holds what the run reads, without reading the weights: the
/// transformer's config (this run's model) and weight files (every shard), the text encoder's
/// config and weight files, and a tokenizer that fits the encoder's vocabulary.
fn check_wan_pipeline(config: &RunConfig, dir: &WanPipelineDir) -> Result<()> {
    config.model()?;
    apt_mmdit::weights::diffusers_weight_files(&dir.transformer())?;
    Umt5TextEncoder::check_files(&dir.tokenizer(), &dir.text_encoder())?;
    if let Some(shift) = dir.flow_shift()? {
        let samplers = [
            (
                "distill.teacher",
                config.distill.as_ref().map(|d| &d.teacher),
            ),
            ("report.teacher", Some(&config.report.teacher)),
        ];
        for (key, sampler) in samplers {
            if let Some(s) = sampler.filter(|s| s.shift != shift) {
                tracing::warn!(
                    "`{key}.shift` is {} but the pipeline's scheduler samples with flow_shift \
                     {shift} ({})",
                    s.shift,
                    dir.root().join("scheduler").display()
                );
            }
        }
    }
    Ok(())
}

/// The report a whole run ends with: on other data than moving shapes it is the
/// teacher-feature Fréchet distance, which needs more clips than feature dimensions and that
/// many real clips. (A run of one named stage writes no report.)
pub fn check_report(config: &RunConfig) -> Result<()> {
    let report = &config.report;
    if let Some(i3d) = &report.fvd_i3d {
        crate::eval::fvd::I3d::load(i3d, config.device()?)?;
    }
    if config.data.shapes().is_some() && report.real.is_none() {
        return Ok(());
    }
    let width = config.model_config()?.hidden_size();
    let dim = report.feature_dim.min(width);
    if report.prompts <= dim {
        return Err(config_error(
            "report.prompts",
            format!(
                "is {} but the teacher-feature Fréchet distance of a run on other data than \
                 moving shapes takes more clips than its {dim} feature dimensions (raise \
                 report.prompts or lower report.feature_dim)",
                report.prompts
            ),
        ));
    }
    let path = match (&report.real, &config.data) {
        (Some(real), _) => real.clone(),
        (None, DataConfig::Files { path, .. } | DataConfig::Latents { path, .. }) => path.clone(),
        (None, DataConfig::Shapes { .. }) => return Ok(()),
    };
    let set = Dataset::open(&path, apt_data::OnBadSample::Skip)?;
    if set.len() < report.prompts {
        return Err(config_error(
            "report.prompts",
            format!(
                "is {} but {} holds {} clips: the evaluation takes one real clip per caption",
                report.prompts,
                path.display(),
                set.len()
            ),
        ));
    }
    Ok(())
}

/// Settings that train, but not as the config's author likely meant.
pub fn warnings(config: &RunConfig, stages: &[Stage]) -> Vec<String> {
    let mut out = Vec::new();
    for &stage in stages {
        let Some(train) = config.train_config(stage) else {
            continue;
        };
        let warmup = train.schedule.warmup_steps;
        if warmup > 0 && warmup >= train.steps {
            out.push(format!(
                "`{}.train.schedule.warmup_steps` ({warmup}) is not below `steps` ({}): the \
                 learning rate ends at {:.0}% of its peak and never decays",
                stage.section(),
                train.steps,
                100.0 * train.steps as f64 / warmup as f64
            ));
        }
    }
    out
}

/// A files or latents data set opens and holds at least one batch of every stage that draws
/// from it.
fn check_data(config: &RunConfig, stages: &[Stage]) -> Result<()> {
    let (path, policy) = match &config.data {
        DataConfig::Shapes { .. } => return Ok(()),
        DataConfig::Files {
            path,
            on_bad_sample,
            ..
        }
        | DataConfig::Latents {
            path,
            on_bad_sample,
            ..
        } => (path, *on_bad_sample),
    };
    if !path.exists() {
        return Err(config_error(
            "data.path",
            format!(
                "{} does not exist (expected a folder of clips with caption sidecars, or a \
                 JSONL manifest)",
                path.display()
            ),
        ));
    }
    let set = Dataset::open(path, policy)?;
    for &stage in stages {
        let Some(train) = config.train_config(stage) else {
            continue;
        };
        // Deterministic distillation trains on teacher pairs, not on the data set.
        if stage == Stage::Distill {
            continue;
        }
        if set.items.len() < train.batch_size {
            return Err(config_error(
                &format!("{}.train.batch_size", stage.section()),
                format!(
                    "is {}, but {} holds {} usable clip(s){}: one batch cannot be filled",
                    train.batch_size,
                    path.display(),
                    set.items.len(),
                    match set.skipped.len() {
                        0 => String::new(),
                        n => format!(" ({n} more listed but unusable)"),
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// `vae.from` holds weights next to its `config.json` (read by the config's validation): the
/// single file, or the shards its index names.
fn check_vae_dir(dir: &Path) -> Result<()> {
    let files = apt_mmdit::weights::diffusers_weight_files(dir)?;
    match files.iter().find(|f| !f.is_file()) {
        None => Ok(()),
        Some(missing) => Err(PipelineError::File {
            path: missing.clone(),
            reason: "missing: `vae.from` names it among its weights".into(),
        }),
    }
}
