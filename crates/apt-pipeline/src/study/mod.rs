//! Studies of the adversarial stage (`apt study --config configs/studies/NAME.toml`):
//! variants of `[apt]`, each trained with several seeds, all started from one shared teacher
//! and distilled initialisation (trained once, or reused from an existing run) or from a
//! further init made from the same teacher, evaluated on the same prompts and noise against
//! the shared distilled one- and two-step generators (and the teacher) with paired bootstrap
//! intervals, and summarised over seeds.
//!
//! ```toml
//! base = "../demo.toml"          # the run config every variant starts from
//! out = "runs/studies/apt"       # shared/, inits/, <variant>/seed-<s>/, results.*, plots/
//! seeds = [0, 1, 2]              # training seeds of the adversarial stage
//! set = ["apt.train.steps=60"]   # overrides for every run (optional)
//! init = "runs/demo"             # optional: reuse this run's teacher and distilled student
//!
//! [[inits]]                      # optional: a further student from the same teacher
//! name = "distill-2400"
//! set = ["distill.train.steps=2400"]
//!
//! [[variants]]
//! name = "paper"                 # no overrides: the base recipe (the study's control)
//!
//! [[variants]]
//! name = "translate-long"
//! set = ["apt.translate=3", "apt.train.steps=480"]
//! seeds = [0]                    # its own seeds (default: the study's)
//! init = "distill-2400"          # starts from that init (default: the shared one)
//! curve = "translate"            # one line with other `translate` variants in plots/scaling.png
//! ```
//!
//! A variant may change only `[apt]` keys, an init only `distill`, `consistency` and `[apt]`
//! keys (the teacher and the data are shared): any other changed key is an error naming it.

pub mod config;
pub mod markdown;
pub mod plot;

pub mod results;
pub mod run;
pub mod samples;
pub mod scores;
pub mod write;

use std::path::{Path, PathBuf};

use crate::config::{changed_keys, RunConfig};
use crate::error::{config_error, io_error, PipelineError, Result};

pub use config::{InitVariant, StudyConfig, Variant};
pub use results::{evaluate_study, StudyResults};
pub use run::{run_study, StudyProgress};
pub use write::write_results;

/// A further init of a study: its name and run config (`out` = `<out>/inits/<name>`).
#[derive(Debug, Clone)]
pub struct StudyInit {
    /// Name.
    pub name: String,
    /// What it changes.
    pub about: String,
    /// Its run config.
    pub config: RunConfig,
}

/// One variant × seed.
#[derive(Debug, Clone)]
pub struct StudyRun {
    /// The variant's name.
    pub variant: String,
    /// The training seed.
    pub seed: u64,
    /// The index into [`Study::inits`] it starts from (`None`: the shared init).
    pub init: Option<usize>,
    /// Its run config (`out` = `<out>/<variant>/seed-<seed>`).
    pub config: RunConfig,
}

impl StudyRun {
    /// Its adversarial stage's updates, and clips per update (batch × accumulation): their
    /// product is the clips it sees.
    pub fn updates_and_batch(&self) -> (u64, u64) {
        self.config.apt.as_ref().map_or((0, 0), |a| {
            (
                a.train.steps,
                (a.train.batch_size * a.train.grad_accum) as u64,
            )
        })
    }
}

/// A study read from its file, every run config built and checked.
#[derive(Debug, Clone)]
pub struct Study {
    /// The file's contents.
    pub config: StudyConfig,
    /// The shared init's run config (`out` = the shared directory).
    pub shared: RunConfig,
    /// The further inits, in the file's order.
    pub inits: Vec<StudyInit>,
    /// Every variant × seed, variants in the file's order.
    pub runs: Vec<StudyRun>,
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
        let mut inits = Vec::new();
        for i in &config.inits {
            let mut set = i.set.clone();
            set.push(format!("out={:?}", config.out.join("inits").join(&i.name)));
            let cfg = with(&set).map_err(|e| in_variant(&format!("init `{}`", i.name), e))?;
            check_changes(&shared, &cfg, &i.name, InitOrVariant::Init)?;
            inits.push(StudyInit {
                name: i.name.clone(),
                about: i.about.clone(),
                config: cfg,
            });
        }
        let mut runs = Vec::new();
        for v in &config.variants {
            let init = v
                .init
                .as_ref()
                .and_then(|name| config.inits.iter().position(|i| &i.name == name));
            let (init_set, from) = match init {
                Some(k) => (config.inits[k].set.clone(), &inits[k].config),
                None => (vec![], &shared),
            };
            for &seed in v.seeds(&config) {
                let mut set = init_set.clone();
                set.extend_from_slice(&v.set);
                set.push(format!("seed={seed}"));
                set.push(format!("out={:?}", run_dir(&config.out, &v.name, seed)));
                let cfg =
                    with(&set).map_err(|e| in_variant(&format!("variant `{}`", v.name), e))?;
                check_changes(from, &cfg, &v.name, InitOrVariant::Variant)?;
                runs.push(StudyRun {
                    variant: v.name.clone(),
                    seed,
                    init,
                    config: cfg,
                });
            }
        }
        Ok(Self {
            config,
            shared,
            inits,
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
        reason: format!("{reason} (in {name})"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum InitOrVariant {
    Init,
    Variant,
}

/// A variant may change `[apt]` keys (and its seed) of the init it starts from; an init may
/// also change the student's stages, not the teacher or the data.
fn check_changes(from: &RunConfig, to: &RunConfig, name: &str, what: InitOrVariant) -> Result<()> {
    let free = |k: &str| match what {
        InitOrVariant::Variant => k == "seed" || k == "out" || k.starts_with("apt."),
        InitOrVariant::Init => {
            k == "out"
                || ["apt.", "distill.", "consistency."]
                    .iter()
                    .any(|p| k.starts_with(p))
        }
    };
    if let Some(c) = changed_keys(from, to).into_iter().find(|c| !free(&c.key)) {
        let (who, may) = match what {
            InitOrVariant::Variant => (
                "variant",
                "a study shares the teacher and the distilled init, so only [apt] keys may vary",
            ),
            InitOrVariant::Init => (
                "init",
                "an init shares the teacher and the data, so only distill, consistency and [apt] \
                 keys may vary",
            ),
        };
        return Err(config_error(
            &c.key,
            format!("is changed by {who} `{name}`: {may} ({c})"),
        ));
    }
    Ok(())
}
