//! A study's evaluation: the baselines (the shared distilled student in one and two steps, the
//! teacher, each further init's student) and every variant × seed's APT one-step generator
//! (EMA) on the same prompts and noise, one paired bootstrap over all of them, and per variant
//! the differences to the distilled one-step (the reference) and to the distilled two-step,
//! summarised over the seeds (mean, spread, and how many seeds resolve the sign at 95%).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::run::init_stages;
use super::scores::{cached_or_scored, score_path, ScoreKey};
use super::Study;
use crate::config::{default_eval_batch, EvalConfig};
use crate::error::{config_error, Result};
use crate::eval::alignment::{score_clips, summarise, FeatureScale, ScoredClips};
use crate::eval::bootstrap::paired_bootstrap;
use crate::eval::run::Generation;
use crate::eval::{patch_grid, AlignmentReport, Interval};
use crate::latent::Space;
use crate::run_dir::{RunDir, Stage};
use crate::text::TextConditioner;

pub use super::markdown::markdown;

/// The metrics a study reports, with the direction that counts as better (`true`: lower).
pub const STUDY_METRICS: [(&str, bool); 6] = [
    ("frechet", true),
    ("sharpness_error", true),
    ("periodicity", true),
    ("colour_accuracy", false),
    ("shape_accuracy", false),
    ("direction_accuracy", false),
];

/// One seed of one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    /// Training seed.
    pub seed: u64,
    /// APT one-step (EMA) on every prompt.
    pub report: AlignmentReport,
    /// Metric → interval of (this run − the distilled one-step).
    pub vs_reference: BTreeMap<String, Interval>,
    /// Metric → interval of (this run − the distilled two-step).
    #[serde(default)]
    pub vs_two_step: BTreeMap<String, Interval>,
}

/// A metric's difference to a baseline over a variant's seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OverSeeds {
    /// Mean of the per-seed differences.
    pub mean: f64,
    /// Their sample standard deviation (0 for one seed).
    pub spread: f64,
    /// Seeds whose 95% interval excludes 0 on the better side.
    pub better: usize,
    /// … on the worse side.
    pub worse: usize,
    /// Seeds.
    pub seeds: usize,
}

/// One variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantResult {
    /// Name.
    pub name: String,
    /// What it tests.
    pub about: String,
    /// Its overrides.
    pub set: Vec<String>,
    /// The further init it starts from (`None`: the shared one).
    #[serde(default)]
    pub init: Option<String>,
    /// Its line in the scaling plot.
    #[serde(default)]
    pub curve: Option<String>,
    /// Updates of its adversarial stage.
    #[serde(default)]
    pub updates: u64,
    /// Clips per update: batch × accumulation.
    #[serde(default)]
    pub batch: u64,
    /// Clips its adversarial stage saw: updates × batch.
    #[serde(default)]
    pub clips: u64,
    /// Per seed.
    pub seeds: Vec<SeedResult>,
    /// Metric → the difference to the distilled one-step over the seeds.
    pub summary: BTreeMap<String, OverSeeds>,
    /// Metric → the difference to the distilled two-step over the seeds.
    #[serde(default)]
    pub summary_vs_two_step: BTreeMap<String, OverSeeds>,
}

/// A model every variant is compared with or against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineRow {
    /// Name (`distilled one-step`, `teacher (25-step CFG 2)`, `init <name>: … one-step`).
    pub name: String,
    /// Network evaluations per clip.
    pub network_evaluations: usize,
    /// On its prompts (the teacher: `report.teacher_prompts` of them).
    pub report: AlignmentReport,
    /// Metric → its interval.
    pub intervals: BTreeMap<String, Interval>,
    /// Metric → interval of (this − the distilled one-step).
    pub vs_reference: BTreeMap<String, Interval>,
    /// Metric → interval of (this − the distilled two-step).
    pub vs_two_step: BTreeMap<String, Interval>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyResults {
    /// Prompts per model.
    pub prompts: usize,
    /// Bootstrap resamples.
    pub bootstrap: usize,
    /// The shared distilled one-step generator.
    pub reference: AlignmentReport,
    /// Its own intervals.
    pub reference_intervals: BTreeMap<String, Interval>,
    /// The baselines: the shared student in one and two steps, the teacher, each further
    /// init's student in one and two steps.
    #[serde(default)]
    pub baselines: Vec<BaselineRow>,
    /// The variants, in the study's order, with the seeds that have finished.
    pub variants: Vec<VariantResult>,
    /// Runs not finished when the study was evaluated (`<variant> seed <s>`).
    #[serde(default)]
    pub pending: Vec<String>,
}

impl StudyResults {
    /// The baseline called `name`.
    pub fn baseline(&self, name: &str) -> Option<&BaselineRow> {
        self.baselines.iter().find(|b| b.name == name)
    }
}

pub(crate) fn summarise_seeds(intervals: &[&Interval], lower_is_better: bool) -> Option<OverSeeds> {
    let values: Vec<f64> = intervals.iter().map(|i| i.estimate).collect();
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let spread = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let below = intervals.iter().filter(|i| i.hi < 0.0).count();
    let above = intervals.iter().filter(|i| i.lo > 0.0).count();
    let (better, worse) = if lower_is_better {
        (below, above)
    } else {
        (above, below)
    };
    Some(OverSeeds {
        mean,
        spread,
        better,
        worse,
        seeds: values.len(),
    })
}

/// A student's name in the tables: `distilled` or `consistency-distilled`.
pub fn student_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Consistency => "consistency-distilled",
        _ => "distilled",
    }
}

/// How a row's clips are made.
enum Source {
    /// The teacher's multi-step CFG sampler, on `report.teacher_prompts`.
    Teacher(PathBuf),
    /// An exported generator in `n` steps.
    Steps(PathBuf, usize),
}

/// Scores the baselines and every finished variant × seed on the study's prompts (the base's
/// `[report]` seed and noise), then bootstraps. `progress(done, total, name)` after each model.
pub fn evaluate_study(
    study: &Study,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<StudyResults> {
    let run = &study.shared;
    let shapes = run
        .data
        .shapes()
        .ok_or_else(|| config_error("data", "a study is evaluated on the moving-shapes data"))?;
    let device = run.device()?;
    let patch = patch_grid(&run.model()?);
    let text = TextConditioner::for_run(run, device)?;
    let null = text.null()?;
    let report = &run.report;
    let eval = |prompts: usize| EvalConfig {
        prompts,
        seed: report.seed,
        sampler: report.teacher,
        batch: default_eval_batch(),
    };
    let shared = RunDir::new(&run.out);
    let student = init_stages(run)[1];
    let s = student_name(student);
    let path = shared.export_path(student);
    let teacher = format!(
        "teacher ({}-step CFG {})",
        report.teacher.steps, report.teacher.cfg_scale
    );
    let mut rows = vec![
        (format!("{s} one-step"), 1, Source::Steps(path.clone(), 1)),
        (format!("{s} two-step"), 2, Source::Steps(path, 2)),
        (
            teacher,
            report.teacher.network_evaluations(),
            Source::Teacher(shared.export_path(Stage::Pretrain)),
        ),
    ];
    let mut pending_inits = Vec::new();
    for init in &study.inits {
        let stage = init_stages(&init.config)[1];
        let dir = RunDir::new(&init.config.out);
        if !dir.is_finished(stage) {
            pending_inits.push(format!("init {}", init.name));
            continue;
        }
        let path = dir.export_path(stage);
        let name = format!("init {}: {}", init.name, student_name(stage));
        rows.push((
            format!("{name} one-step"),
            1,
            Source::Steps(path.clone(), 1),
        ));
        rows.push((format!("{name} two-step"), 2, Source::Steps(path, 2)));
    }
    let baselines = rows.len();
    // Runs still training are left out (and listed), so a long study can be read as it goes.
    let (finished, pending): (Vec<_>, Vec<_>) = study
        .runs
        .iter()
        .partition(|r| RunDir::new(&r.config.out).is_finished(Stage::Apt));
    for r in &finished {
        let path = RunDir::new(&r.config.out).export_path(Stage::Apt);
        rows.push((
            format!("{} seed {}", r.variant, r.seed),
            1,
            Source::Steps(path, 1),
        ));
    }
    let space = Space::open(run, &shared)?;
    let mut scored: Vec<ScoredClips> = Vec::new();
    for (name, _, source) in &rows {
        let (path, generation, prompts) = match source {
            Source::Teacher(path) => (
                path,
                format!(
                    "teacher {}",
                    serde_json::to_string(&report.teacher).unwrap_or_default()
                ),
                report.teacher_prompts.unwrap_or(report.prompts),
            ),
            Source::Steps(path, steps) => (path, format!("{steps} steps"), report.prompts),
        };
        let generation = format!("{generation} on {device:?}");
        let key = ScoreKey::new(run, path, generation, prompts, default_eval_batch())?;
        let cache = score_path(&study.config.out, name);
        let clips = cached_or_scored(&cache, key, || {
            let model = crate::run_dir::load_exported(path, device)?.model;
            let how = match source {
                Source::Teacher(_) => Generation::Teacher(&model),
                Source::Steps(_, steps) => Generation::Steps(&model, *steps),
            };
            let generate = |z: &tch::Tensor, c: &apt_flow::Conditioning| {
                how.generate(z, c, &null, &report.teacher)
            };
            score_clips(
                shapes,
                &text,
                &eval(prompts),
                &space,
                patch,
                device,
                stop,
                generate,
            )
        })?;
        scored.push(clips);
        progress(scored.len(), rows.len(), name);
    }
    let sets: Vec<&ScoredClips> = scored.iter().collect();
    let draws = report.bootstrap.max(1);
    // Row 0 is the reference (the distilled one-step); row 1, the distilled two-step, is every
    // other row's control.
    let controls: Vec<(usize, usize, String)> = (0..rows.len())
        .filter(|&m| m != 1)
        .map(|m| (m, 1, rows[1].0.clone()))
        .collect();
    let intervals = paired_bootstrap(&sets, 0, &controls, draws, report.seed);
    let scale = FeatureScale::common(&sets).expect("the study has baselines");
    let report_of = |i: usize| {
        let all: Vec<usize> = (0..scored[i].clips.len()).collect();
        summarise(&scored[i], &all, &scale)
    };
    let zero = |m: &BTreeMap<String, Interval>| -> BTreeMap<String, Interval> {
        m.keys()
            .map(|k| {
                (
                    k.clone(),
                    Interval {
                        estimate: 0.0,
                        lo: 0.0,
                        hi: 0.0,
                    },
                )
            })
            .collect()
    };
    let baseline_rows = (0..baselines)
        .map(|i| BaselineRow {
            name: rows[i].0.clone(),
            network_evaluations: rows[i].1,
            report: report_of(i),
            intervals: intervals[i].metrics.clone(),
            vs_reference: intervals[i].vs_reference.clone(),
            vs_two_step: if i == 1 {
                zero(&intervals[i].metrics)
            } else {
                intervals[i].vs_control.clone()
            },
        })
        .collect();
    let mut variants = Vec::new();
    let mut next = baselines;
    for v in &study.config.variants {
        let mut seeds = Vec::new();
        let (mut updates, mut batch) = (0, 0);
        for r in finished.iter().filter(|r| r.variant == v.name) {
            (updates, batch) = r.updates_and_batch();
            seeds.push(SeedResult {
                seed: r.seed,
                report: report_of(next),
                vs_reference: intervals[next].vs_reference.clone(),
                vs_two_step: intervals[next].vs_control.clone(),
            });
            next += 1;
        }
        let over = |pick: fn(&SeedResult) -> &BTreeMap<String, Interval>| {
            STUDY_METRICS
                .iter()
                .filter_map(|&(m, lower)| {
                    let each: Vec<&Interval> = seeds.iter().map(|s| &pick(s)[m]).collect();
                    summarise_seeds(&each, lower).map(|o| (m.to_string(), o))
                })
                .collect()
        };
        variants.push(VariantResult {
            name: v.name.clone(),
            about: v.about.clone(),
            set: v.set.clone(),
            init: v.init.clone(),
            curve: v.curve.clone(),
            updates,
            batch,
            clips: updates * batch,
            summary: over(|s| &s.vs_reference),
            summary_vs_two_step: over(|s| &s.vs_two_step),
            seeds,
        });
    }
    Ok(StudyResults {
        prompts: report.prompts,
        bootstrap: draws,
        reference: report_of(0),
        reference_intervals: intervals[0].metrics.clone(),
        baselines: baseline_rows,
        variants,
        pending: pending_inits
            .into_iter()
            .chain(
                pending
                    .iter()
                    .map(|r| format!("{} seed {}", r.variant, r.seed)),
            )
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_summarise_to_mean_spread_and_resolved_signs() {
        let i = |estimate, lo, hi| Interval { estimate, lo, hi };
        let (a, b, c) = (i(-2.0, -3.0, -1.0), i(-4.0, -5.0, -3.0), i(0.0, -1.0, 1.0));
        let o = summarise_seeds(&[&a, &b, &c], true).unwrap();
        assert!((o.mean + 2.0).abs() < 1e-12 && (o.spread - 2.0).abs() < 1e-12);
        assert_eq!((o.better, o.worse, o.seeds), (2, 0, 3));
        let o = summarise_seeds(&[&a, &b, &c], false).unwrap();
        assert_eq!((o.better, o.worse), (0, 2));
        assert_eq!(summarise_seeds(&[&a], true).unwrap().spread, 0.0);
        assert_eq!(summarise_seeds(&[], true), None);
    }
}
