//! The sections of a run config, each with its defaults and its checks (errors name the full
//! key). The training loop's table is `apt_flow::TrainConfig` in every stage.

use std::path::{Path, PathBuf};

use apt_flow::distill::{ConsistencyConfig, ConsistencyTarget};
use apt_flow::pretrain::FlowMatchingConfig;
use apt_flow::{SamplerConfig, TrainConfig};
use apt_gan::adversarial::config::IMAGE_SIGMA_R1;
use apt_gan::discriminator::IMAGE_TIME_SHIFT;
use apt_gan::{AdversarialConfig, DiscriminatorConfig};
use apt_mmdit::lora::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// How a stage evaluates the generator it made (moving-shapes data only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Prompts (moving-shapes captions of samples `0..prompts` of the eval seed).
    #[serde(default = "default_eval_prompts")]
    pub prompts: usize,
    /// Seed of the prompts and the noise.
    #[serde(default = "default_eval_seed")]
    pub seed: u64,
    /// The sampler (steps, method, shift, CFG).
    pub sampler: SamplerConfig,
    /// Prompts per generation batch.
    #[serde(default = "default_eval_batch")]
    pub batch: usize,
}

fn default_eval_prompts() -> usize {
    32
}
/// The evaluation seed every report uses (not a training seed).
pub fn default_eval_seed() -> u64 {
    77_777
}
/// Prompts per generation batch in evaluations.
pub fn default_eval_batch() -> usize {
    16
}

impl EvalConfig {
    /// Checks the values (`key`: where the table sits, e.g. `pretrain.eval`).
    pub fn validate(&self, key: &str) -> Result<()> {
        positive(&format!("{key}.prompts"), self.prompts)?;
        positive(&format!("{key}.batch"), self.batch)?;
        Ok(self.sampler.validate(&format!("{key}.sampler"))?)
    }
}

/// `[pretrain]`: stage 1, rectified-flow pre-training of the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSection {
    /// A teacher exported earlier to start from instead of training one: a directory holding
    /// `teacher.safetensors`, its export record `teacher.json` and `model.toml` (what this
    /// stage writes into a run's `pretrain/`, e.g. `assets/teachers/…`), or the weights file
    /// itself. Relative to the working directory, like `out`. The stage then checks and copies
    /// it into the run instead of training; `train` stays the recipe that trains one from
    /// scratch (`--set pretrain.from=""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// The method: `p_uncond` (CFG dropout) and `timesteps`, with apt-flow's defaults.
    #[serde(flatten)]
    pub method: FlowMatchingConfig,
    /// Fixed validation clips (moving shapes only; 0 = none).
    #[serde(default = "default_val")]
    pub val_clips: usize,
    /// Evaluation of the finished teacher (moving shapes only).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// The loop's knobs.
    pub train: TrainConfig,
}

fn default_val() -> usize {
    16
}

impl PretrainSection {
    /// The teacher to import ([`PretrainSection::from`]), `None` when it is absent or empty
    /// (train one).
    pub fn import_from(&self) -> Option<&Path> {
        self.from.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.method.validate("pretrain")?;
        validate_eval(&self.eval, "pretrain.eval")?;
        validate_flow_train(&self.train, "pretrain")
    }
}

/// `[distill]`: stage 2a, deterministic distillation on teacher ODE pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    /// The teacher's sampler for the pairs.
    pub teacher: SamplerConfig,
    /// Number of `(z, c) → x_teacher` pairs.
    pub pairs: usize,
    /// Pairs per shard file.
    #[serde(default = "default_shard")]
    pub shard_size: usize,
    /// A text file of prompts for the pairs, one per line (blank lines skipped), used in
    /// turn. Default: the moving-shapes captions of the benchmark, or the captions of the
    /// run's files / latents (sorted, in turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PathBuf>,
    /// One-step evaluation (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// Train low-rank adapters instead of every weight (`rank`, `alpha`, `dropout`, `targets`
    /// by diffusers name); exports hold the merged model and `lora.safetensors` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The loop's knobs.
    pub train: TrainConfig,
}

fn default_shard() -> usize {
    256
}

impl DistillSection {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        positive("distill.pairs", self.pairs)?;
        positive("distill.shard_size", self.shard_size)?;
        if self.pairs < self.train.batch_size {
            return Err(config_error(
                "distill.pairs",
                format!(
                    "must be at least distill.train.batch_size ({}), got {}",
                    self.train.batch_size, self.pairs
                ),
            ));
        }
        self.teacher.validate("distill.teacher")?;
        validate_eval(&self.eval, "distill.eval")?;
        validate_lora(&self.lora, &self.train, "distill")?;
        validate_flow_train(&self.train, "distill")
    }
}

/// `[consistency]`: stage 2b, consistency distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencySection {
    /// The method: `points`, `shift`, `cfg_scale`, `target`, with apt-flow's defaults.
    #[serde(flatten)]
    pub method: ConsistencyConfig,
    /// One-step evaluation (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// Train low-rank adapters instead of every weight (`rank`, `alpha`, `dropout`, `targets`
    /// by diffusers name); exports hold the merged model and `lora.safetensors` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The loop's knobs.
    pub train: TrainConfig,
}

impl ConsistencySection {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        self.method.validate("consistency")?;
        if self.method.target == ConsistencyTarget::Ema && self.train.ema_decay.is_none() {
            return Err(config_error(
                "consistency.target",
                "\"ema\" needs consistency.train.ema_decay",
            ));
        }
        if self.train.shard_mode().splits_weights() {
            return Err(config_error(
                "consistency.train.shard",
                format!(
                    "\"{}\" is not available here: the target network copies the whole student \
                     (or its EMA) after every update; use \"optimizer\" or \"none\"",
                    self.train.shard_mode()
                ),
            ));
        }
        validate_eval(&self.eval, "consistency.eval")?;
        validate_lora(&self.lora, &self.train, "consistency")?;
        validate_flow_train(&self.train, "consistency")
    }
}

/// Which distilled student starts the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorInit {
    /// `distill/student.safetensors`.
    Distill,
    /// `consistency/student.safetensors` (the paper's choice).
    Consistency,
}

/// `[apt]`: stage 3, adversarial post-training (the video stage; `[apt.image]` adds an image
/// stage before it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSection {
    /// The adversarial objective, with apt-gan's defaults (the paper's video stage):
    /// `lambda_r1`, `sigma_r1`, `loss`, `lambda_r2`, `sigma_r2`, `d_steps`, `translate`,
    /// `noised_inputs`.
    #[serde(flatten)]
    pub method: AdversarialConfig,
    /// Which distilled student starts G.
    #[serde(default = "default_init")]
    pub generator_init: GeneratorInit,
    /// G's parameters the stage leaves as initialised: every parameter whose name contains one
    /// of these strings (diffusers names, e.g. `"norm1.linear"`, `"norm1_context.linear"` and
    /// `"norm_out.linear"` for the adaLN modulations, `".bias"` for every bias). Default: none
    /// (the paper trains all of G). A string that names no parameter is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generator_frozen: Vec<String>,
    /// Discriminator taps and time distribution, with apt-gan's defaults.
    #[serde(default)]
    pub discriminator: DiscriminatorConfig,
    /// Evaluation of the distilled start and the final generator (moving shapes).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// An image stage before this (video) stage, as in the paper: G then continues from the
    /// image stage's generator and D restarts from the diffusion weights.
    #[serde(default)]
    pub image: Option<ImageStage>,
    /// Low-rank adapters on G and on D's backbone instead of their every weight (D's heads
    /// train fully); G's export holds the merged model and `lora.safetensors` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The loop's knobs: `optimizer` is G's, `optimizer_d` D's; `ema_decay` is G's EMA.
    pub train: TrainConfig,
}

fn default_init() -> GeneratorInit {
    GeneratorInit::Distill
}

/// `[apt.image]`: the image stage's differences from the video stage (its defaults are the
/// paper's image stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageStage {
    /// Generator updates.
    pub steps: u64,
    /// Frames per training clip (1 = images; a multiple of the temporal patch).
    #[serde(default = "one_frame")]
    pub frames: usize,
    /// aR1's σ (and aR2's unless `sigma_r2` is set); the paper's 0.01 for images.
    #[serde(default = "image_sigma_r1")]
    pub sigma_r1: f64,
    /// D's time shift; the paper's 1 for images.
    #[serde(default = "image_time_shift")]
    pub time_shift: f64,
}

fn one_frame() -> usize {
    1
}
fn image_sigma_r1() -> f64 {
    IMAGE_SIGMA_R1
}
fn image_time_shift() -> f64 {
    IMAGE_TIME_SHIFT
}

impl AptSection {
    /// The image stage's objective: the video stage's with the image stage's σ.
    pub fn image_method(&self, image: &ImageStage) -> AdversarialConfig {
        AdversarialConfig {
            sigma_r1: image.sigma_r1,
            ..self.method
        }
    }

    /// The image stage's discriminator: the video stage's taps, D times
    /// `shift(U(0, 1), image.time_shift)`.
    pub fn image_discriminator(&self, image: &ImageStage) -> DiscriminatorConfig {
        DiscriminatorConfig {
            time_shift: image.time_shift,
            times: None,
            ..self.discriminator.clone()
        }
    }

    /// Checks that every `generator_frozen` pattern is part of some name in `names` (G's
    /// parameters).
    pub fn check_generator_frozen(&self, names: &[String]) -> Result<()> {
        match self
            .generator_frozen
            .iter()
            .find(|p| !names.iter().any(|name| name.contains(p.as_str())))
        {
            None => Ok(()),
            Some(p) => Err(config_error(
                "apt.generator_frozen",
                format!(
                    "`{p}` is in no parameter name of G (names look like \
                     `transformer_blocks.0.norm1.linear.weight`, `proj_out.bias`)"
                ),
            )),
        }
    }

    /// Checks the values for a backbone of `depth` blocks.
    pub fn validate(&self, depth: usize) -> Result<()> {
        self.method.validate("apt")?;
        if self.generator_frozen.iter().any(|p| p.is_empty()) {
            return Err(config_error(
                "apt.generator_frozen",
                "holds an empty string, which would freeze all of G",
            ));
        }
        self.discriminator.validate("apt.discriminator", depth)?;
        if self.train.optimizer_d.is_none() {
            return Err(config_error(
                "apt.train.optimizer_d",
                "is missing: the discriminator's optimizer (the paper: \
                 { kind = \"rmsprop\", lr = 3e-6, alpha = 0.9 })",
            ));
        }
        if let Some(image) = &self.image {
            positive("apt.image.steps", image.steps as usize)?;
            positive("apt.image.frames", image.frames)?;
            self.image_method(image).validate("apt.image")?;
            self.image_discriminator(image)
                .validate("apt.image", depth)?;
        }
        validate_eval(&self.eval, "apt.eval")?;
        validate_lora(&self.lora, &self.train, "apt")?;
        Ok(self.train.validate("apt.train")?)
    }
}

/// `[<stage>.lora]`: its values; dropout cannot be recomputed (the recomputed forward would
/// draw other masks than the first).
fn validate_lora(lora: &Option<LoraConfig>, train: &TrainConfig, stage: &str) -> Result<()> {
    let Some(lora) = lora else { return Ok(()) };
    lora.validate(&format!("{stage}.lora"))?;
    if lora.dropout > 0.0 && train.recompute {
        return Err(config_error(
            &format!("{stage}.lora.dropout"),
            format!(
                "is {} with {stage}.train.recompute: the recomputed pass would drop other \
                 inputs than the first; use one or the other",
                lora.dropout
            ),
        ));
    }
    Ok(())
}

pub(super) fn positive(key: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(config_error(key, "must be at least 1"));
    }
    Ok(())
}

fn validate_eval(eval: &Option<EvalConfig>, key: &str) -> Result<()> {
    match eval {
        Some(e) => e.validate(key),
        None => Ok(()),
    }
}

/// A flow stage's `[<stage>.train]`: the loop's checks, and no discriminator optimizer.
fn validate_flow_train(train: &TrainConfig, stage: &str) -> Result<()> {
    if train.optimizer_d.is_some() {
        return Err(config_error(
            &format!("{stage}.train.optimizer_d"),
            "is for [apt.train] only: this stage trains one model",
        ));
    }
    Ok(train.validate(&format!("{stage}.train"))?)
}
