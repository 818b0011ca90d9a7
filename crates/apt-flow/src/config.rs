//! The run configuration (TOML): one file describes the model, the data, the text encoder and
//! every stage. Unknown keys are errors naming the key.

use std::path::{Path, PathBuf};

use apt_mmdit::{MmditConfig, Preset};
use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::distill::{ConsistencyConfig, DistillConfig};
use crate::error::{config_error, FlowError, Result};
use crate::pretrain::PretrainConfig;
use crate::sampler::SamplerConfig;

/// `[model]`: a preset name or a full model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A built-in preset (`tiny`, `small`, …).
    #[serde(default)]
    pub preset: Option<String>,
    /// A full config (instead of a preset).
    #[serde(default)]
    pub config: Option<MmditConfig>,
}

/// `[text]`: the frozen text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// Tokens per caption after padding/truncation.
    #[serde(default = "default_tokens")]
    pub tokens: usize,
    /// Caption-embedding cache (default: `<run>/text-cache`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_tokens() -> usize {
    16
}

impl Default for TextSection {
    fn default() -> Self {
        Self {
            tokens: default_tokens(),
            cache: None,
        }
    }
}

/// `[report]`: the evaluation after the last stage (`apt train --stage all`, `apt eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// Held-out moving-shapes prompts every generator is evaluated on.
    #[serde(default = "default_report_prompts")]
    pub prompts: usize,
    /// The teacher's sampler (default: 25 Euler steps with CFG 2).
    #[serde(default = "default_teacher_sampler")]
    pub teacher: SamplerConfig,
    /// Prompts that get a side-by-side GIF (teacher | distilled | APT).
    #[serde(default = "default_gifs")]
    pub gifs: usize,
}

fn default_report_prompts() -> usize {
    64
}
fn default_teacher_sampler() -> SamplerConfig {
    SamplerConfig {
        steps: 25,
        method: crate::sampler::Method::Euler,
        shift: 1.0,
        cfg_scale: 2.0,
    }
}
fn default_gifs() -> usize {
    4
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            prompts: default_report_prompts(),
            teacher: default_teacher_sampler(),
            gifs: default_gifs(),
        }
    }
}

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
    /// The MMDiT.
    pub model: ModelSection,
    /// Training clips.
    pub data: DataConfig,
    /// Text conditioning.
    #[serde(default)]
    pub text: TextSection,
    /// Stage 1: rectified-flow pre-training of the teacher.
    #[serde(default)]
    pub pretrain: Option<PretrainConfig>,
    /// Stage 2a: deterministic distillation (teacher ODE pairs → one step).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Stage 2b: consistency distillation.
    #[serde(default)]
    pub consistency: Option<ConsistencyConfig>,
    /// Stage 3: adversarial post-training (parsed and checked by `apt-gan`).
    #[serde(default)]
    pub apt: Option<toml::Table>,
    /// The final evaluation and report.
    #[serde(default)]
    pub report: ReportSection,
}

fn cpu() -> String {
    "cpu".into()
}

impl RunConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// Reads a TOML file, applies `key=value` overrides (`pretrain.train.steps=10`; the value
    /// is TOML, or a bare string) and validates every section. Unknown keys and out-of-range
    /// values are errors naming the key.
    pub fn from_file_with(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FlowError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file_error = |reason: String| FlowError::File {
            path: path.to_path_buf(),
            reason: reason.trim().replace('\n', " "),
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Self = if overrides.is_empty() {
            toml::from_str(&text)
        } else {
            toml::Value::Table(table).try_into()
        }
        .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section on its own (the model against the data and text encoder is
    /// [`RunConfig::check_compatibility`]).
    pub fn validate(&self) -> Result<()> {
        self.model_config()?;
        self.device()?;
        if let Some(t) = self.threads {
            if t == 0 {
                return Err(config_error("threads", "must be at least 1"));
            }
        }
        if self.text.tokens == 0 {
            return Err(config_error("text.tokens", "must be at least 1"));
        }
        self.data.validate()?;
        if self.report.prompts == 0 {
            return Err(config_error("report.prompts", "must be at least 1"));
        }
        self.report.teacher.validate()?;
        if let Some(p) = &self.pretrain {
            p.validate()?;
        }
        if let Some(d) = &self.distill {
            d.validate()?;
        }
        if let Some(c) = &self.consistency {
            c.validate()?;
        }
        Ok(())
    }

    /// The model config of `[model]` (a preset or a full config), validated on its own.
    pub fn model_config(&self) -> Result<MmditConfig> {
        let cfg = match (&self.model.preset, &self.model.config) {
            (Some(name), None) => Preset::named(name)?.config,
            (None, Some(cfg)) => cfg.clone(),
            _ => {
                return Err(config_error(
                    "model",
                    "give exactly one of `preset` and `config`",
                ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The model config, checked against the data and the text encoder (MiniLM: 384 wide):
    /// what every stage needs before it can run here.
    pub fn model(&self) -> Result<MmditConfig> {
        let cfg = self.model_config()?;
        self.check_compatibility(&cfg)?;
        Ok(cfg)
    }

    /// Whether `cfg` fits the clips of `[data]` and the MiniLM text encoder.
    pub fn check_compatibility(&self, cfg: &MmditConfig) -> Result<()> {
        let [c, t, h, w] = crate::data::TrainData::clip_shape(&self.data);
        if cfg.in_channels as i64 != c || cfg.out_channels as i64 != c {
            return Err(config_error(
                "model",
                format!(
                    "takes {} → {} channels but the data has {c}",
                    cfg.in_channels, cfg.out_channels
                ),
            ));
        }
        let [pt, ph, pw] = cfg.patch_size.map(|p| p as i64);
        if t % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(config_error(
                "data",
                format!(
                    "clips {t}×{h}×{w} are not divisible by the patch size {:?}",
                    cfg.patch_size
                ),
            ));
        }
        if cfg.context_dim != 384 || cfg.pooled_dim != 384 {
            return Err(config_error(
                "model",
                format!(
                    "context_dim and pooled_dim must be 384 (MiniLM), got {} and {}",
                    cfg.context_dim, cfg.pooled_dim
                ),
            ));
        }
        Ok(())
    }

    /// The device.
    pub fn device(&self) -> Result<tch::Device> {
        match self.device.as_str() {
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

    /// The caption-embedding cache directory.
    pub fn text_cache(&self) -> PathBuf {
        self.text
            .cache
            .clone()
            .unwrap_or_else(|| self.out.join("text-cache"))
    }
}

/// Sets `key.path=value` in `table`: the value is parsed as TOML (`10`, `1e-4`, `"cuda"`,
/// `[1, 2]`, `{ kind = "constant" }`), falling back to a bare string (`device=cuda`).
/// Intermediate tables are created; whether the key exists is for deserialisation to say.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| config_error(assignment, "--set takes key=value"))?;
    let (key, value) = (key.trim(), value.trim());
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(config_error(
            key,
            "is not a dotted key (e.g. pretrain.train.steps)",
        ));
    }
    let mut here = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = here
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = entry.as_table_mut().ok_or_else(|| {
            config_error(
                &parts[..=i].join("."),
                "is a value, not a table: cannot set a key below it",
            )
        })?;
    }
    here.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_toml_values_and_fall_back_to_strings() {
        let mut t: toml::Table = toml::from_str("[a]\nb = 1").unwrap();
        apply_override(&mut t, "a.b=2").unwrap();
        apply_override(&mut t, "a.c.d = [1, 2]").unwrap();
        apply_override(&mut t, "device=cuda:1").unwrap();
        apply_override(&mut t, "s=\"quoted\"").unwrap();
        apply_override(&mut t, "lr=1e-4").unwrap();
        assert_eq!(t["a"]["b"].as_integer(), Some(2));
        assert_eq!(t["a"]["c"]["d"].as_array().unwrap().len(), 2);
        assert_eq!(t["device"].as_str(), Some("cuda:1"));
        assert_eq!(t["s"].as_str(), Some("quoted"));
        assert_eq!(t["lr"].as_float(), Some(1e-4));
        let e = apply_override(&mut t, "a.b.c=1").unwrap_err().to_string();
        assert!(e.contains("`a.b`"), "{e}");
        assert!(apply_override(&mut t, "a..b=1").is_err());
        assert!(apply_override(&mut t, "novalue").is_err());
    }
}
