//! A run directory and every file name in it, in one place: the stage directories, their
//! checkpoints, metrics, reports and exported models (with an integrity record checked on
//! every load), and the run's own files (config, log, report, plots, samples, lock).
//!
//! ```text
//! runs/NAME/  config.toml  log.txt  .lock  metrics.json  report.md  plots/  samples/  text-cache/
//!   vae/          config.json + diffusion_pytorch_model.safetensors (diffusers), checkpoints/, report.json
//!   pretrain/     teacher.safetensors + teacher.json + model.toml, checkpoints/, metrics.jsonl, report.json
//!   distill/      pairs/, student.safetensors + student.json + model.toml, …
//!   consistency/  student.safetensors + student.json + model.toml, …
//!   apt-image/    generator.safetensors + generator.json + model.toml, previews/, …
//!   apt/          generator.safetensors + generator.json + model.toml, previews/, initial.json, …
//! ```

use std::path::{Path, PathBuf};

use apt_flow::train::checkpoint;
use apt_mmdit::{Model, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::error::{io_error, PipelineError, Result};

/// A stage of the pipeline, and its directory in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Training the video VAE whose latent space the other stages work in (`[vae]`).
    Vae,
    /// Rectified-flow pre-training of the teacher.
    Pretrain,
    /// Deterministic distillation (teacher ODE pairs → one step).
    Distill,
    /// Consistency distillation.
    Consistency,
    /// Adversarial post-training on images (before the video stage, when configured).
    AptImage,
    /// Adversarial post-training.
    Apt,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Vae,
        Stage::Pretrain,
        Stage::Distill,
        Stage::Consistency,
        Stage::AptImage,
        Stage::Apt,
    ];

    /// The directory name and label (`vae`, `pretrain`, …, `apt-image`, `apt`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Vae => "vae",
            Stage::Pretrain => "pretrain",
            Stage::Distill => "distill",
            Stage::Consistency => "consistency",
            Stage::AptImage => "apt-image",
            Stage::Apt => "apt",
        }
    }

    /// The config section that drives it (`apt` for both adversarial stages).
    pub fn section(self) -> &'static str {
        match self {
            Stage::AptImage => "apt",
            other => other.name(),
        }
    }

    /// The exported model's file: `teacher`, `student` or `generator` `.safetensors` (the VAE
    /// exports a diffusers directory: its weights file).
    pub fn export_file(self) -> &'static str {
        match self {
            Stage::Vae => apt_mmdit::weights::DIFFUSERS_WEIGHTS,
            Stage::Pretrain => "teacher.safetensors",
            Stage::Distill | Stage::Consistency => "student.safetensors",
            Stage::AptImage | Stage::Apt => "generator.safetensors",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The model config written next to every exported model.
pub const MODEL_CONFIG: &str = "model.toml";

/// The format tag of an export's integrity record.
pub const EXPORT_FORMAT: &str = "apt-rs export v1";

/// What is recorded next to an exported model (`teacher.json` next to
/// `teacher.safetensors`): the weights file's size and FNV-1a 64 hash, checked on every load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// The weights file name.
    pub weights: String,
    /// Its size in bytes.
    pub weights_bytes: u64,
    /// Its FNV-1a 64 hash (hex).
    pub weights_fnv64: String,
    /// The stage that exported it.
    pub stage: String,
    /// The training step it was exported at.
    pub step: u64,
}

/// A model loaded from an export.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its weights.
    pub vs: nn::VarStore,
    /// The model on them.
    pub model: Model,
    /// Its config (`model.toml`).
    pub config: ModelConfig,
    /// The weights file.
    pub path: PathBuf,
}

/// The files of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`: the resolved config of record.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    /// `text-cache/`: the caption embeddings, unless the config puts them elsewhere.
    pub fn default_text_cache(&self) -> PathBuf {
        self.root.join("text-cache")
    }

    /// The model config next to a stage's export.
    pub fn model_config_file(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join(MODEL_CONFIG)
    }

    /// `log.txt`: every log event of the runs in this directory.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("log.txt")
    }

    /// `.lock`: held by the process using the directory.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// `metrics.json`: the run's evaluation table.
    pub fn metrics_file(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    /// `report.md`.
    pub fn report_file(&self) -> PathBuf {
        self.root.join("report.md")
    }

    /// `plots/`.
    pub fn plots_dir(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// `samples/`.
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    /// The stage's directory.
    pub fn stage(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.name())
    }

    /// The stage's checkpoints.
    pub fn checkpoints(&self, stage: Stage) -> PathBuf {
        self.stage(stage)
            .join(apt_flow::train::trainer::CHECKPOINT_DIR)
    }

    /// The stage's `metrics.jsonl`.
    pub fn stage_metrics(&self, stage: Stage) -> PathBuf {
        self.stage(stage)
            .join(apt_flow::train::metrics::METRICS_FILE)
    }

    /// The stage's `report.json` (written last: its presence means the stage finished).
    pub fn stage_report(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join("report.json")
    }

    /// The stage's exported model.
    pub fn export_path(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join(stage.export_file())
    }

    /// The stage's export of raw (not averaged) weights, next to the EMA export: an adversarial
    /// stage writes both (`generator-raw.safetensors`).
    pub fn raw_export_path(&self, stage: Stage) -> PathBuf {
        let file = stage
            .export_file()
            .replace(".safetensors", "-raw.safetensors");
        self.stage(stage).join(file)
    }

    /// The deterministic distillation's teacher pairs.
    pub fn pairs_dir(&self) -> PathBuf {
        self.stage(Stage::Distill).join("pairs")
    }

    /// A stage's preview images.
    pub fn previews_dir(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join("previews")
    }

    /// Pre-training's validation loss of the initial weights.
    pub fn val_loss_start_file(&self) -> PathBuf {
        self.stage(Stage::Pretrain).join("val_loss_start.json")
    }

    /// An adversarial stage's evaluation of its starting generator.
    pub fn initial_eval_file(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join("initial.json")
    }

    /// True when the stage has written a checkpoint.
    pub fn has_checkpoints(&self, stage: Stage) -> bool {
        !checkpoint::manifests(&self.checkpoints(stage)).is_empty()
    }

    /// True when the stage finished (its `report.json` exists).
    pub fn is_finished(&self, stage: Stage) -> bool {
        self.stage_report(stage).is_file()
    }

    /// True when the stage has left anything a later run depends on: checkpoints, teacher
    /// pairs (deterministic distillation), an export or a report.
    pub fn has_state(&self, stage: Stage) -> bool {
        self.has_checkpoints(stage)
            || self.is_finished(stage)
            || self.export_path(stage).is_file()
            || (stage == Stage::Distill && self.has_pairs())
    }

    /// True when deterministic distillation has written teacher pairs (a generation that was
    /// interrupted continues from them).
    pub fn has_pairs(&self) -> bool {
        std::fs::read_dir(self.pairs_dir()).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("shard-") && name.ends_with(".safetensors")
            })
        })
    }

    /// The LoRA adapters a stage trained (`<stage>/lora.safetensors`, diffusers' layout).
    pub fn lora_path(&self, stage: Stage) -> PathBuf {
        self.stage(stage).join("lora.safetensors")
    }

    /// Exports the weights of `vs` (model config `cfg`) as the stage's model, atomically: the
    /// weights, `model.toml`, then the integrity record.
    pub fn export_model(
        &self,
        stage: Stage,
        vs: &nn::VarStore,
        cfg: &ModelConfig,
        step: u64,
    ) -> Result<PathBuf> {
        self.export_to(stage, &self.export_path(stage), vs, cfg, step)
    }

    /// [`RunDir::export_model`] to `path` (in the stage's directory), e.g. a raw export.
    pub fn export_to(
        &self,
        stage: Stage,
        path: &Path,
        vs: &nn::VarStore,
        cfg: &ModelConfig,
        step: u64,
    ) -> Result<PathBuf> {
        let dir = self.stage(stage);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let path = path.to_path_buf();
        apt_mmdit::save_safetensors(vs, &path)?;
        write_atomically(&dir.join(MODEL_CONFIG), cfg.to_toml_string().as_bytes())?;
        let (bytes, hash) = checkpoint::fingerprint(&path)?;
        let record = ExportRecord {
            format: EXPORT_FORMAT.into(),
            weights: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            weights_bytes: bytes,
            weights_fnv64: hash,
            stage: stage.name().into(),
            step,
        };
        write_json(&record_path(&path), &record)?;
        Ok(path)
    }

    /// The stage's exported model, verified (see [`load_exported`]); `None` when the stage has
    /// not exported one.
    pub fn load_model(&self, stage: Stage, device: Device) -> Result<Option<LoadedModel>> {
        let path = self.export_path(stage);
        if !path.is_file() {
            return Ok(None);
        }
        load_exported(&path, device).map(Some)
    }

    /// The stage's exported model, which a later stage needs: an error naming the file and the
    /// stage to run when it is missing.
    pub fn require_model(&self, stage: Stage, device: Device) -> Result<LoadedModel> {
        self.load_model(stage, device)?
            .ok_or_else(|| PipelineError::File {
                path: self.export_path(stage),
                reason: format!("missing: run the `{stage}` stage first"),
            })
    }
}

/// The integrity record next to a weights file (`x.safetensors` → `x.json`).
pub fn record_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// The integrity record next to `weights`, parsed (`None` when there is none).
pub fn export_record(weights: &Path) -> Result<Option<ExportRecord>> {
    let record = record_path(weights);
    if !record.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&record).map_err(io_error(&record))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| PipelineError::File {
            path: record.clone(),
            reason: format!("not an export record: {e}"),
        })
}

/// Checks an exported weights file against its integrity record (size and hash) and returns
/// the record; a file without one (weights brought from elsewhere) passes with a warning.
pub fn verify_export(path: &Path) -> Result<Option<ExportRecord>> {
    let bad = |reason: String| PipelineError::File {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(bad("no such weights file".into()));
    }
    let record = export_record(path)?;
    match &record {
        Some(r) => {
            let (bytes, hash) = checkpoint::fingerprint(path)?;
            if r.format != EXPORT_FORMAT || bytes != r.weights_bytes || hash != r.weights_fnv64 {
                return Err(bad(format!(
                    "does not match its integrity record {} ({bytes} bytes, hash {hash}; \
                     recorded {} bytes, hash {}): the file was changed or damaged; export it \
                     again",
                    record_path(path).display(),
                    r.weights_bytes,
                    r.weights_fnv64
                )));
            }
        }
        None => {
            tracing::warn!(weights = %path.display(), "no integrity record next to the weights; loading them unchecked")
        }
    }
    Ok(record)
}

/// Loads an exported model: `model.toml` next to the weights, the weights checked against
/// their integrity record ([`verify_export`]), and every tensor checked to be finite.
pub fn load_exported(path: &Path, device: Device) -> Result<LoadedModel> {
    verify_export(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = ModelConfig::from_toml_file(dir.join(MODEL_CONFIG))?;
    let vs = nn::VarStore::new(device);
    let model = apt_flow::rng::with_global_seed(0, || Model::new(vs.root(), &config))?;
    apt_mmdit::load_safetensors(&vs, path)?;
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in names {
        let finite = tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0);
        if !finite {
            return Err(PipelineError::File {
                path: path.to_path_buf(),
                reason: format!(
                    "`{name}` holds NaN or Inf values: these weights cannot generate anything"
                ),
            });
        }
    }
    Ok(LoadedModel {
        vs,
        model,
        config,
        path: path.to_path_buf(),
    })
}

/// Writes `bytes` to `path` atomically (a temporary sibling, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    apt_mmdit::weights::write_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| apt_mmdit::MmditError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    write_atomically(
        path,
        serde_json::to_string_pretty(value)
            .expect("reports serialise")
            .as_bytes(),
    )
}
