//! Ablation studies of the adversarial stage (`apt study --config configs/studies/NAME.toml`):
//! variants of `[apt]`, each trained with several seeds, all started from one shared teacher
//! and distilled initialisation (trained once, or reused from an existing run), evaluated on
//! the same prompts and noise against the shared distilled one-step generator with paired
//! bootstrap intervals, and summarised over seeds.
//!
//! ```toml
//! base = "../demo.toml"          # the run config every variant starts from
//! out = "runs/studies/apt"       # shared/, <variant>/seed-<s>/, results.md, results.json, plots/
//! seeds = [0, 1, 2]              # training seeds of the adversarial stage
//! set = ["apt.train.steps=60"]   # overrides for every run (optional)
//! init = "runs/demo"             # optional: reuse this run's teacher and distilled student
//!
//! [[variants]]
//! name = "paper"                 # no overrides: the base recipe (the study's control)
//!
//! [[variants]]
//! name = "translate"
//! set = ["apt.translate=3"]
//! ```
//!
//! Only `[apt]` keys may vary (a variant that changes the teacher or the data would not start
//! from the shared init): any other changed key is an error naming it.

pub mod results;
pub mod run;
pub mod write;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{changed_keys, RunConfig};
use crate::error::{config_error, io_error, PipelineError, Result};

pub use results::{evaluate_study, StudyResults};
pub use run::{run_study, StudyProgress};
pub use write::write_results;

/// A study file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The run config the variants start from (relative to the study file).
    pub base: PathBuf,
    /// Where the study writes (relative to the working directory, like a run's `out`).
    pub out: PathBuf,
    /// Training seeds of every variant's adversarial stage.
    pub seeds: Vec<u64>,
    /// `key=value` overrides for every run, the shared init included.
    #[serde(default)]
    pub set: Vec<String>,
    /// A finished run directory whose teacher and distilled student are reused (default:
    /// trained once into `<out>/shared`).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Evaluation prompts per model (default: the base's `report.prompts`).
    #[serde(default)]
    pub prompts: Option<usize>,
    /// The variants, in table order.
    pub variants: Vec<Variant>,
}

/// One variant: a name and its `[apt]` overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Directory and table name (letters, digits, `-`, `_`).
    pub name: String,
    /// What it tests, for the results table.
    #[serde(default)]
    pub about: String,
    /// `key=value` overrides of `[apt]` keys.
    #[serde(default)]
    pub set: Vec<String>,
}

/// A study read from its file, every run config built and checked.
#[derive(Debug, Clone)]
pub struct Study {
    /// The file's contents.
    pub config: StudyConfig,
    /// The shared init's run config (`out` = the shared directory).
    pub shared: RunConfig,
    /// Each variant's run config per seed: `(variant, seed, config)`.
    pub runs: Vec<(String, u64, RunConfig)>,
}

impl Study {
    /// Reads `path`, builds the shared config and every variant × seed config, and checks them.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with_init(path, None)
    }

    /// [`Study::load`], with `init` (when given) replacing the file's `init`.
    pub fn load_with_init(path: &Path, init: Option<PathBuf>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let mut config: StudyConfig = toml::from_str(&text).map_err(|e| PipelineError::File {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        if init.is_some() {
            config.init = init;
        }
        let base = path.parent().unwrap_or(Path::new(".")).join(&config.base);
        Self::build(config, &base)
    }

    /// Builds the study from its config and the base run config's path.
    pub fn build(config: StudyConfig, base: &Path) -> Result<Self> {
        config.validate()?;
        let shared_dir = config
            .init
            .clone()
            .unwrap_or_else(|| config.out.join("shared"));
        let mut common = config.set.clone();
        // Every run shares the init's caption cache.
        common.push(format!("text.cache={:?}", shared_dir.join("text-cache")));
        if let Some(p) = config.prompts {
            common.push(format!("report.prompts={p}"));
        }
        let with = |extra: &[String]| -> Result<RunConfig> {
            let mut all = common.clone();
            all.extend_from_slice(extra);
            RunConfig::load(base, &all)
        };
        let shared = with(&[format!("out={:?}", shared_dir)])?;
        if shared.apt.is_none() {
            return Err(config_error(
                "apt",
                format!("the study's base {} has no [apt] section", base.display()),
            ));
        }
        let mut runs = Vec::new();
        for v in &config.variants {
            for &seed in &config.seeds {
                let mut set = v.set.clone();
                set.push(format!("seed={seed}"));
                set.push(format!("out={:?}", run_dir(&config.out, &v.name, seed)));
                let cfg = with(&set).map_err(|e| in_variant(&v.name, e))?;
                check_only_apt_changes(&shared, &cfg, &v.name)?;
                runs.push((v.name.clone(), seed, cfg));
            }
        }
        Ok(Self {
            config,
            shared,
            runs,
        })
    }
}

/// `<out>/<variant>/seed-<seed>`.
pub fn run_dir(out: &Path, variant: &str, seed: u64) -> PathBuf {
    out.join(variant).join(format!("seed-{seed}"))
}

fn in_variant(name: &str, e: PipelineError) -> PipelineError {
    let (key, reason) = match e {
        PipelineError::Config { key, reason }
        | PipelineError::Flow(apt_flow::FlowError::Config { key, reason }) => (key, reason),
        other => return other,
    };
    PipelineError::Config {
        key,
        reason: format!("{reason} (in variant `{name}`)"),
    }
}

fn check_only_apt_changes(shared: &RunConfig, variant: &RunConfig, name: &str) -> Result<()> {
    let free = |k: &str| k == "seed" || k == "out" || k.starts_with("apt.");
    if let Some(c) = changed_keys(shared, variant)
        .into_iter()
        .find(|c| !free(&c.key))
    {
        return Err(config_error(
            &c.key,
            format!(
                "is changed by variant `{name}`: a study shares the teacher and the distilled \
                 init, so only [apt] keys may vary ({c})"
            ),
        ));
    }
    Ok(())
}

impl StudyConfig {
    /// Checks the study's own keys (the runs' configs are checked when built).
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(config_error("seeds", "give at least one training seed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &s in &self.seeds {
            if !seen.insert(s) {
                return Err(config_error("seeds", format!("seed {s} is listed twice")));
            }
        }
        if self.variants.is_empty() {
            return Err(config_error("variants", "give at least one [[variants]]"));
        }
        let mut names = std::collections::BTreeSet::new();
        for v in &self.variants {
            let ok = !v.name.is_empty()
                && v.name != "shared"
                && v.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(config_error(
                    "variants.name",
                    format!(
                        "`{}` must be letters, digits, `-` or `_` (and not `shared`)",
                        v.name
                    ),
                ));
            }
            if !names.insert(v.name.as_str()) {
                return Err(config_error(
                    "variants.name",
                    format!("`{}` is used twice", v.name),
                ));
            }
        }
        if self.prompts == Some(0) {
            return Err(config_error("prompts", "must be at least 1"));
        }
        Ok(())
    }
}
