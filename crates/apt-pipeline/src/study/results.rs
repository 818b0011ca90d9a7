//! A study's evaluation: the shared distilled one-step generator (the reference) and every
//! variant × seed's APT one-step generator (EMA) on the same prompts and noise, one paired
//! bootstrap over all of them, and per variant the differences to the reference summarised
//! over the seeds (mean, spread, and how many seeds resolve the sign at 95%).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;

use apt_flow::OneStepGenerator;
use serde::{Deserialize, Serialize};

use super::run::init_stages;
use super::Study;
use crate::config::{default_eval_batch, EvalConfig};
use crate::error::{config_error, Result};
use crate::eval::alignment::{score_clips, summarise, FeatureScale, ScoredClips};
use crate::eval::bootstrap::paired_bootstrap;
use crate::eval::{patch_grid, AlignmentReport, Interval};
use crate::latent::Space;
use crate::run_dir::{RunDir, Stage};
use crate::text::TextConditioner;

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
}

/// A metric's difference to the reference over a variant's seeds.
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
    /// Per seed.
    pub seeds: Vec<SeedResult>,
    /// Metric → the difference to the reference over the seeds.
    pub summary: BTreeMap<String, OverSeeds>,
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
    /// The variants, in the study's order.
    pub variants: Vec<VariantResult>,
}

fn summarise_seeds(seeds: &[SeedResult], metric: &str, lower_is_better: bool) -> OverSeeds {
    let intervals: Vec<&Interval> = seeds.iter().map(|s| &s.vs_reference[metric]).collect();
    let values: Vec<f64> = intervals.iter().map(|i| i.estimate).collect();
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
    OverSeeds {
        mean,
        spread,
        better,
        worse,
        seeds: values.len(),
    }
}

/// Scores the reference and every finished variant × seed on the study's prompts (the base's
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
    let eval = EvalConfig {
        prompts: run.report.prompts,
        seed: run.report.seed,
        sampler: run.report.teacher,
        batch: default_eval_batch(),
    };
    let student = *init_stages(run).last().expect("a student stage");
    let mut names = vec![format!("{student} one-step")];
    let mut paths = vec![RunDir::new(&run.out).export_path(student)];
    for (variant, seed, cfg) in &study.runs {
        names.push(format!("{variant} seed {seed}"));
        paths.push(RunDir::new(&cfg.out).export_path(Stage::Apt));
    }
    let space = Space::open(run, &RunDir::new(&run.out))?;
    let mut scored: Vec<ScoredClips> = Vec::new();
    for (name, path) in names.iter().zip(&paths) {
        let model = crate::run_dir::load_exported(path, device)?.model;
        let g = OneStepGenerator::new(&model);
        scored.push(score_clips(
            shapes,
            &text,
            &eval,
            &space,
            patch,
            device,
            stop,
            |z, c| g.generate(z, c),
        )?);
        progress(scored.len(), names.len(), name);
    }
    let sets: Vec<&ScoredClips> = scored.iter().collect();
    let draws = run.report.bootstrap.max(1);
    let intervals = paired_bootstrap(&sets, 0, &[], draws, run.report.seed);
    let scale = FeatureScale::of(&scored[0].real);
    let all: Vec<usize> = (0..eval.prompts).collect();
    let report_of = |i: usize| summarise(&scored[i], &all, &scale);
    let mut variants = Vec::new();
    let mut next = 1;
    for v in &study.config.variants {
        let mut seeds = Vec::new();
        for &seed in &study.config.seeds {
            seeds.push(SeedResult {
                seed,
                report: report_of(next),
                vs_reference: intervals[next].vs_reference.clone(),
            });
            next += 1;
        }
        let summary = STUDY_METRICS
            .iter()
            .map(|&(m, lower)| (m.to_string(), summarise_seeds(&seeds, m, lower)))
            .collect();
        variants.push(VariantResult {
            name: v.name.clone(),
            about: v.about.clone(),
            set: v.set.clone(),
            seeds,
            summary,
        });
    }
    Ok(StudyResults {
        prompts: eval.prompts,
        bootstrap: draws,
        reference: report_of(0),
        reference_intervals: intervals[0].metrics.clone(),
        variants,
    })
}

fn scaled(metric: &str, v: f64) -> f64 {
    if metric.ends_with("accuracy") {
        100.0 * v
    } else {
        v
    }
}

/// The results as markdown: the reference, one summary row per variant (mean ± spread of the
/// difference to the reference over seeds; ✓k/✗k = seeds resolved better/worse at 95%), then
/// every seed with its intervals.
pub fn markdown(results: &StudyResults) -> String {
    let mut s = String::new();
    let header: Vec<&str> = STUDY_METRICS.iter().map(|(m, _)| *m).collect();
    let r = &results.reference;
    let _ = writeln!(
        s,
        "Reference: the shared distilled one-step generator on {} prompts: Fréchet {:.2}, \
         sharpness error {:.2}, periodicity {:.2}, colour {:.1}%, shape {:.1}%, direction \
         {:.1}%. Accuracies in points; {} bootstrap resamples.\n",
        results.prompts,
        r.frechet,
        (r.sharpness_vs_real - 1.0).abs(),
        r.periodicity,
        100.0 * r.colour_accuracy,
        100.0 * r.shape_accuracy,
        100.0 * r.direction_accuracy,
        results.bootstrap,
    );
    let _ = writeln!(
        s,
        "Δ vs distilled one-step, mean ± spread over seeds (✓k / ✗k: seeds whose 95% \
         interval is better / worse):\n"
    );
    let _ = writeln!(s, "| variant | seeds | {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(header.len()));
    for v in &results.variants {
        let cells: Vec<String> = STUDY_METRICS
            .iter()
            .map(|(m, _)| {
                let o = &v.summary[*m];
                format!(
                    "{:+.2} ± {:.2} ✓{} ✗{}",
                    scaled(m, o.mean),
                    scaled(m, o.spread),
                    o.better,
                    o.worse
                )
            })
            .collect();
        let n = v.seeds.len();
        let _ = writeln!(s, "| {} | {n} | {} |", v.name, cells.join(" | "));
    }
    let _ = writeln!(s, "\nPer seed, Δ [95% interval]:\n");
    let _ = writeln!(s, "| variant | seed | {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(header.len()));
    for v in &results.variants {
        for seed in &v.seeds {
            let cells: Vec<String> = STUDY_METRICS
                .iter()
                .map(|(m, _)| {
                    let i = &seed.vs_reference[*m];
                    format!(
                        "{:+.2} [{:+.2}, {:+.2}]",
                        scaled(m, i.estimate),
                        scaled(m, i.lo),
                        scaled(m, i.hi)
                    )
                })
                .collect();
            let _ = writeln!(s, "| {} | {} | {} |", v.name, seed.seed, cells.join(" | "));
        }
    }
    let _ = writeln!(s, "\nVariants:\n");
    for v in &results.variants {
        let set = if v.set.is_empty() {
            "(the base recipe)".to_string()
        } else {
            format!("`{}`", v.set.join("`, `"))
        };
        let _ = writeln!(s, "- **{}**: {set}. {}", v.name, v.about);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(estimate: f64, lo: f64, hi: f64) -> SeedResult {
        SeedResult {
            seed: 0,
            report: AlignmentReport::default(),
            vs_reference: [("frechet".to_string(), Interval { estimate, lo, hi })].into(),
        }
    }

    #[test]
    fn seeds_summarise_to_mean_spread_and_resolved_signs() {
        let seeds = [
            seed(-2.0, -3.0, -1.0),
            seed(-4.0, -5.0, -3.0),
            seed(0.0, -1.0, 1.0),
        ];
        let o = summarise_seeds(&seeds, "frechet", true);
        assert!((o.mean + 2.0).abs() < 1e-12 && (o.spread - 2.0).abs() < 1e-12);
        assert_eq!((o.better, o.worse, o.seeds), (2, 0, 3));
        let o = summarise_seeds(&seeds, "frechet", false);
        assert_eq!((o.better, o.worse), (0, 2));
        assert_eq!(summarise_seeds(&seeds[..1], "frechet", true).spread, 0.0);
    }
}
