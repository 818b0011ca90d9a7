//! The run configuration (TOML): one file describes the model, the data, the text encoder and
//! every stage, parsed once into typed sections and validated once. Unknown keys, moved keys
//! and out-of-range values are errors naming the key.

mod compare;
mod data;
mod embedded;
mod model;
mod overrides;
mod report;
mod sections;
mod text;
mod vae;

use std::path::{Path, PathBuf};

use apt_flow::train::Precision;
use apt_flow::TrainConfig;
use apt_gan::discriminator::{DiscriminatorTimes, NamedTimes};
use serde::{Deserialize, Serialize};

pub use compare::{changed_keys, with_values_of, Change};
pub use data::DataConfig;
pub use model::{ModelSection, MINILM_WIDTH};
pub use overrides::{apply_override, upgrade_old_keys};
pub use report::ReportSection;
pub use sections::{
    default_eval_batch, default_eval_seed, AptSection, ConsistencySection, DistillSection,
    EvalConfig, GeneratorInit, ImageStage, PretrainSection,
};
pub use text::TextSection;
pub use vae::{latent_shape_of, VaeSection};

use crate::error::{config_error, PipelineError, Result};
use crate::run_dir::Stage;

/// `cpu`, `cuda` or `cuda:N` as a device (an error naming `device` otherwise).
pub fn parse_device(name: &str) -> Result<tch::Device> {
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => Ok(tch::Device::Cuda(i)),
            None => Err(config_error(
                "device",
                format!("must be cpu, cuda or cuda:N, got {other:?}"),
            )),
        },
    }
}

/// The most libtorch threads a config may ask for.
pub const MAX_THREADS: usize = 1024;

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory (`runs/NAME`).
    pub out: PathBuf,
    /// Seed of everything random.
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// libtorch intra-op threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Arithmetic of every trained network and the teacher: `fp32`, or `bf16` (bf16 weights,
    /// activations and gradients; fp32 master weights, optimizer state, EMA, gradient
    /// accumulation and losses). Evaluation and exports stay fp32.
    #[serde(default, skip_serializing_if = "is_fp32")]
    pub precision: Precision,
    /// The model: an MMDiT preset or config, or a Wan 2.1 pipeline directory to post-train.
    pub model: ModelSection,
    /// A video VAE to train (or take) and work in the latent space of (absent: pixel space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeSection>,
    /// Training clips.
    pub data: DataConfig,
    /// Text conditioning.
    #[serde(default)]
    pub text: TextSection,
    /// Stage 1: rectified-flow pre-training of the teacher.
    #[serde(default)]
    pub pretrain: Option<PretrainSection>,
    /// Stage 2a: deterministic distillation (teacher ODE pairs → one step).
    #[serde(default)]
    pub distill: Option<DistillSection>,
    /// Stage 2b: consistency distillation.
    #[serde(default)]
    pub consistency: Option<ConsistencySection>,
    /// Stage 3: adversarial post-training.
    #[serde(default)]
    pub apt: Option<AptSection>,
    /// The final evaluation and report.
    #[serde(default)]
    pub report: ReportSection,
    /// Multi-process training: which collective backend the ranks use.
    #[serde(default, skip_serializing_if = "DistSection::is_default")]
    pub dist: DistSection,
}

/// `[dist]`: how the ranks of a data-parallel run talk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistSection {
    /// `"auto"` (under torchrun NCCL for `device = "cuda"`, Gloo for the CPU; MPI under
    /// mpirun or srun), `"gloo"`, `"mpi"`, or `"nccl"` (CUDA tensors, one GPU per rank).
    #[serde(default)]
    pub backend: DistBackend,
    /// Seconds a rank waits at the rendezvous and in a collective for the others before it
    /// stops with an error (c10d; MPI waits for its launcher).
    #[serde(default = "default_dist_timeout")]
    pub timeout_s: u32,
}

fn default_dist_timeout() -> u32 {
    300
}

impl Default for DistSection {
    fn default() -> Self {
        Self {
            backend: DistBackend::Auto,
            timeout_s: default_dist_timeout(),
        }
    }
}

impl DistSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The collective backend of `[dist]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// Chosen by the launcher.
    #[default]
    Auto,
    /// libtorch's c10d Gloo group (torchrun; CPU tensors).
    Gloo,
    /// MPI (mpirun, mpiexec, srun --mpi; CPU tensors).
    Mpi,
    /// libtorch's c10d NCCL group (torchrun; CUDA tensors, `cuda:LOCAL_RANK` per rank).
    Nccl,
}

impl DistBackend {
    /// The name apt-dist takes (`auto`, `gloo`, `mpi`, `nccl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Gloo => "gloo",
            Self::Mpi => "mpi",
            Self::Nccl => "nccl",
        }
    }
}

fn is_fp32(p: &Precision) -> bool {
    *p == Precision::Fp32
}

fn cpu() -> String {
    "cpu".into()
}

impl RunConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::load(path, &[])
    }

    /// Reads a TOML file, applies `key=value` overrides (`pretrain.train.steps=10`; the value
    /// is TOML, or a bare string) and validates every section, once. Unknown keys, keys that
    /// moved and out-of-range values are errors naming the key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        Self::parse(&text, overrides).map_err(|e| match e {
            PipelineError::File { reason, .. } => PipelineError::File {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses a TOML document (see [`RunConfig::load`]); syntax errors come back as
    /// [`PipelineError::File`] with an empty path.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self> {
        let file_error = |reason: String| PipelineError::File {
            path: PathBuf::new(),
            reason: reason.trim().replace('\n', " "),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| file_error(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let renamed = upgrade_old_keys(&mut table)?;
        for (old, new) in &renamed {
            tracing::warn!("`{old}` is the old name of `{new}`: read as `{new}`");
        }
        embedded::check_embedded(&table)?;
        // Without overrides or renames, parse the text itself: its errors point at the line.
        let cfg: Self = if overrides.is_empty() && renamed.is_empty() {
            toml::from_str(text)
        } else {
            toml::Value::Table(table).try_into()
        }
        .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
        let mut cfg = cfg;
        if let (Some(dir), None) = (cfg.model.import_from(), &cfg.vae) {
            // A Wan pipeline brings its VAE: the run works in its latent space.
            cfg.vae = Some(VaeSection::imported(dir.join("vae")));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML (defaults filled in): what `config.toml` of a run holds.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("a run config serialises")
    }

    /// Checks every section on its own (the model against the data and text encoder is
    /// [`RunConfig::check_compatibility`]).
    pub fn validate(&self) -> Result<()> {
        if self.out.as_os_str().is_empty() {
            return Err(config_error(
                "out",
                "must name the run directory (e.g. \"runs/demo\"), got \"\"",
            ));
        }
        let model = self.model_config()?;
        self.device()?;
        if let Some(t) = self.threads {
            if t == 0 || t > MAX_THREADS {
                return Err(config_error(
                    "threads",
                    format!("must be in 1..={MAX_THREADS}, got {t}"),
                ));
            }
        }
        if self.dist.timeout_s == 0 {
            return Err(config_error("dist.timeout_s", "must be at least 1"));
        }
        if self.text.tokens == 0 {
            return Err(config_error("text.tokens", "must be at least 1"));
        }
        self.data.validate()?;
        if let Some(v) = &self.vae {
            v.validate()?;
        }
        self.report.validate()?;
        if let Some(p) = &self.pretrain {
            if self.model.import_from().is_some() {
                return Err(config_error(
                    "pretrain",
                    "is given but [model] from takes the teacher from a pipeline directory: \
                     remove [pretrain]",
                ));
            }
            p.validate()?;
        }
        if let Some(d) = &self.distill {
            d.validate()?;
        }
        if let Some(c) = &self.consistency {
            c.validate()?;
        }
        let adapters = [
            (
                "distill",
                self.distill.as_ref().and_then(|d| d.lora.as_ref()),
            ),
            (
                "consistency",
                self.consistency.as_ref().and_then(|c| c.lora.as_ref()),
            ),
            ("apt", self.apt.as_ref().and_then(|a| a.lora.as_ref())),
        ];
        for (stage, lora) in adapters {
            if let Some(lora) = lora {
                model.lora_modules(lora).map_err(|e| match e {
                    apt_mmdit::MmditError::Config { message, .. } => {
                        config_error(&format!("{stage}.lora.targets"), message)
                    }
                    other => other.into(),
                })?;
            }
        }
        if let Some(a) = &self.apt {
            a.validate(model.depth())?;
            a.check_generator_frozen(&model.parameter_names()?)?;
            let teacher = Some(DiscriminatorTimes::Named(NamedTimes::Teacher));
            if a.discriminator.times == teacher && self.pretrain.is_none() {
                return Err(config_error(
                    "apt.discriminator.times",
                    "is \"teacher\" but there is no [pretrain] section to take the teacher's \
                     timesteps from: give a sampler table instead",
                ));
            }
        }
        Ok(())
    }

    /// The shape `[C, T, H, W]` the models see: the data's clips, or their latents under
    /// `[vae]` (an error naming `data` when the clips do not fit the VAE's compression).
    pub fn model_clip_shape(&self) -> Result<[i64; 4]> {
        let shape = self.data.clip_shape();
        match (&self.vae, self.data.is_latent()) {
            (None, false) => Ok(shape),
            (None, true) => Err(config_error(
                "data.kind",
                "is \"latents\" but there is no [vae] section (the VAE that made them)",
            )),
            (Some(v), false) => latent_shape_of(&v.vae_config()?, shape),
            (Some(v), true) => {
                let z = v.vae_config()?.z_dim;
                if shape[0] != z {
                    return Err(config_error(
                        "data.shape",
                        format!("has {} channels but the VAE's latents have {z}", shape[0]),
                    ));
                }
                Ok(shape)
            }
        }
    }

    /// The train table of the section driving `stage` (`None` when it is not configured, or
    /// when the stage imports its model instead of training one: `vae.from`, `pretrain.from`).
    pub fn train_config(&self, stage: Stage) -> Option<&TrainConfig> {
        match stage {
            Stage::Vae => self
                .vae
                .as_ref()
                .filter(|v| v.import_from().is_none())
                .and_then(|v| v.train.as_ref()),
            Stage::Pretrain => self
                .pretrain
                .as_ref()
                .filter(|c| c.import_from().is_none())
                .map(|c| &c.train),
            Stage::Distill => self.distill.as_ref().map(|c| &c.train),
            Stage::Consistency => self.consistency.as_ref().map(|c| &c.train),
            Stage::AptImage | Stage::Apt => self.apt.as_ref().map(|c| &c.train),
        }
    }

    /// The device.
    pub fn device(&self) -> Result<tch::Device> {
        parse_device(&self.device)
    }

    /// The caption-embedding cache directory.
    pub fn text_cache(&self) -> PathBuf {
        self.text
            .cache
            .clone()
            .unwrap_or_else(|| crate::run_dir::RunDir::new(&self.out).default_text_cache())
    }

    /// Sets libtorch's intra-op threads from `threads` (warning when above the machine's cores).
    pub fn apply_threads(&self) {
        if let Some(n) = self.threads {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if n > cores {
                tracing::warn!(
                    threads = n,
                    cores,
                    "more threads than cores: expect a slow run"
                );
            }
            tch::set_num_threads(n as i32);
        }
    }
}
