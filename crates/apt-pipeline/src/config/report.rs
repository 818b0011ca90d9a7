//! `[report]`: the evaluation after the last stage, and how a run is judged.

use std::path::PathBuf;

use apt_flow::{Method, SamplerConfig};
use serde::{Deserialize, Serialize};

use super::sections::{default_eval_seed, positive};
use crate::error::{config_error, Result};

/// `[report]`: the evaluation after the last stage (`apt train --stage all`, `apt eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// Held-out moving-shapes prompts every generator is evaluated on (one clip each).
    #[serde(default = "default_report_prompts")]
    pub prompts: usize,
    /// The multi-step teacher on the first this many of them only (it costs 25–50 network
    /// evaluations a clip); all of them when absent. (The moving-shapes table only: the
    /// any-data distance runs the teacher on every clip.)
    #[serde(default)]
    pub teacher_prompts: Option<usize>,
    /// Seed of the prompts and the noise (not a training seed).
    #[serde(default = "default_eval_seed")]
    pub seed: u64,
    /// Paired bootstrap resamples for the intervals (0 = none).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    /// The teacher's sampler (default: 25 Euler steps with CFG 2).
    #[serde(default = "default_teacher_sampler")]
    pub teacher: SamplerConfig,
    /// Prompts that get a side-by-side GIF (teacher | distilled | APT).
    #[serde(default = "default_gifs")]
    pub gifs: usize,
    /// Dimensions of the teacher features the any-data Fréchet distance is taken on (a seeded
    /// projection of the pooled tokens); `prompts` must exceed it.
    #[serde(default = "default_feature_dim")]
    pub feature_dim: usize,
    /// Real clips for the any-data evaluation (a folder with caption sidecars or a manifest);
    /// default: the run's data set (files / latents) or the held-out moving-shapes renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<PathBuf>,
    /// The standard I3D TorchScript file (e.g. StyleGAN-V's `i3d_torchscript.pt`): with it
    /// the any-data evaluation also reports FVD (apt-rs ships no I3D weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvd_i3d: Option<PathBuf>,
}

fn default_feature_dim() -> usize {
    64
}

fn default_report_prompts() -> usize {
    64
}
fn default_teacher_sampler() -> SamplerConfig {
    SamplerConfig {
        steps: 25,
        method: Method::Euler,
        shift: 1.0,
        cfg_scale: 2.0,
    }
}
fn default_gifs() -> usize {
    4
}
fn default_bootstrap() -> usize {
    1000
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            prompts: default_report_prompts(),
            teacher_prompts: None,
            seed: default_eval_seed(),
            bootstrap: default_bootstrap(),
            teacher: default_teacher_sampler(),
            gifs: default_gifs(),
            feature_dim: default_feature_dim(),
            real: None,
            fvd_i3d: None,
        }
    }
}

impl ReportSection {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        positive("report.prompts", self.prompts)?;
        if let Some(n) = self.teacher_prompts {
            if n == 0 || n > self.prompts {
                return Err(config_error(
                    "report.teacher_prompts",
                    format!("must be in 1..={} (report.prompts), got {n}", self.prompts),
                ));
            }
        }
        Ok(self.teacher.validate("report.teacher")?)
    }
}
