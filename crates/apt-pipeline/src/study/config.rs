//! A study file: where it starts, the seeds, the further inits variants may start from, and
//! the variants themselves. See the module docs of [`super`] for an example.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// A study file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The run config the variants start from (relative to the study file).
    pub base: PathBuf,
    /// Where the study writes (relative to the working directory, like a run's `out`).
    pub out: PathBuf,
    /// Training seeds of every variant's adversarial stage (a variant may give its own).
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
    /// Further students (a longer distillation, consistency distillation) that variants may
    /// start from instead of the shared one; each is trained once into `<out>/inits/<name>`
    /// from the shared teacher.
    #[serde(default)]
    pub inits: Vec<InitVariant>,
    /// The variants, in table order.
    pub variants: Vec<Variant>,
}

/// A further init: the shared teacher, a student made another way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitVariant {
    /// Directory and table name (letters, digits, `-`, `_`).
    pub name: String,
    /// What it changes, for the results.
    #[serde(default)]
    pub about: String,
    /// `key=value` overrides of `distill.*`, `consistency.*` or `apt.*` keys (e.g.
    /// `apt.generator_init="consistency"` with a `consistency` table).
    pub set: Vec<String>,
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
    /// Its own training seeds (default: the study's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    /// The `[[inits]]` entry it starts from (default: the shared init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Variants with the same `curve` are one line in the plot of the metrics against the
    /// clips APT saw (`plots/scaling.png`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
}

impl Variant {
    /// Its seeds: its own, else the study's.
    pub fn seeds<'a>(&'a self, study: &'a StudyConfig) -> &'a [u64] {
        self.seeds.as_deref().unwrap_or(&study.seeds)
    }
}

/// Names a directory can have (and that are not the study's own directories).
fn check_name(name: &str, key: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !matches!(name, "shared" | "inits" | "plots" | "scores")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(config_error(
            key,
            format!(
                "`{name}` must be letters, digits, `-` or `_` (and not shared, inits, plots or scores)"
            ),
        ))
    }
}

fn check_seeds(seeds: &[u64], key: &str) -> Result<()> {
    if seeds.is_empty() {
        return Err(config_error(key, "give at least one training seed"));
    }
    let mut seen = BTreeSet::new();
    match seeds.iter().find(|s| !seen.insert(**s)) {
        Some(s) => Err(config_error(key, format!("seed {s} is listed twice"))),
        None => Ok(()),
    }
}

impl StudyConfig {
    /// Checks the study's own keys (the runs' configs are checked when built).
    pub fn validate(&self) -> Result<()> {
        check_seeds(&self.seeds, "seeds")?;
        if self.variants.is_empty() {
            return Err(config_error("variants", "give at least one [[variants]]"));
        }
        let mut inits = BTreeSet::new();
        for i in &self.inits {
            check_name(&i.name, "inits.name")?;
            if !inits.insert(i.name.as_str()) {
                return Err(config_error(
                    "inits.name",
                    format!("`{}` is used twice", i.name),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for v in &self.variants {
            check_name(&v.name, "variants.name")?;
            if !names.insert(v.name.as_str()) {
                return Err(config_error(
                    "variants.name",
                    format!("`{}` is used twice", v.name),
                ));
            }
            if let Some(seeds) = &v.seeds {
                check_seeds(seeds, &format!("variants.{}.seeds", v.name))?;
            }
            if let Some(init) = &v.init {
                if !inits.contains(init.as_str()) {
                    return Err(config_error(
                        &format!("variants.{}.init", v.name),
                        format!(
                            "`{init}` is not an [[inits]] name (known: {})",
                            inits.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        if self.prompts == Some(0) {
            return Err(config_error("prompts", "must be at least 1"));
        }
        Ok(())
    }
}
