//! A study's results as markdown: the baselines, every variant's own metrics (mean ± spread
//! over seeds), its differences to the distilled one-step and two-step (mean ± spread, and how
//! many seeds resolve the sign), then every seed with its intervals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::results::{OverSeeds, StudyResults, VariantResult, STUDY_METRICS};
use crate::eval::bootstrap::metric_value as read;
use crate::eval::Interval;

/// A metric in the tables' unit (accuracies in points).
fn scaled(metric: &str, v: f64) -> f64 {
    if metric.ends_with("accuracy") {
        100.0 * v
    } else {
        v
    }
}

fn interval(metric: &str, i: Option<&Interval>, signed: bool) -> String {
    match i {
        None => "—".into(),
        Some(i) => {
            let (e, lo, hi) = (
                scaled(metric, i.estimate),
                scaled(metric, i.lo),
                scaled(metric, i.hi),
            );
            if signed {
                format!("{e:+.2} [{lo:+.2}, {hi:+.2}]")
            } else {
                format!("{e:.2} [{lo:.2}, {hi:.2}]")
            }
        }
    }
}

fn header(s: &mut String, first: &[&str]) {
    let metrics: Vec<&str> = STUDY_METRICS.iter().map(|(m, _)| *m).collect();
    let _ = writeln!(s, "| {} | {} |", first.join(" | "), metrics.join(" | "));
    let _ = writeln!(
        s,
        "|{}{}",
        "---|".repeat(first.len()),
        "---|".repeat(metrics.len())
    );
}

fn summary_table(
    s: &mut String,
    variants: &[&VariantResult],
    pick: fn(&VariantResult) -> &BTreeMap<String, OverSeeds>,
) {
    header(s, &["variant", "clips", "seeds"]);
    for v in variants {
        let cells: Vec<String> = STUDY_METRICS
            .iter()
            .map(|(m, _)| match pick(v).get(*m) {
                Some(o) => format!(
                    "{:+.2} ± {:.2} ✓{} ✗{}",
                    scaled(m, o.mean),
                    scaled(m, o.spread),
                    o.better,
                    o.worse
                ),
                None => "—".into(),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v.name,
            v.clips,
            v.seeds.len(),
            cells.join(" | ")
        );
    }
}

fn per_seed_table(
    s: &mut String,
    variants: &[&VariantResult],
    pick: fn(&super::results::SeedResult) -> &BTreeMap<String, Interval>,
) {
    header(s, &["variant", "seed"]);
    for v in variants {
        for seed in &v.seeds {
            let cells: Vec<String> = STUDY_METRICS
                .iter()
                .map(|(m, _)| interval(m, pick(seed).get(*m), true))
                .collect();
            let _ = writeln!(s, "| {} | {} | {} |", v.name, seed.seed, cells.join(" | "));
        }
    }
}

/// The results as markdown.
pub fn markdown(results: &StudyResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Every model on the same {} held-out prompts and noise (a teacher on the first \
         `report.teacher_prompts` of them); 95% paired bootstrap intervals over {} resamples \
         (Fréchet: basic intervals, which remove a resampled distance's upward bias). \
         Accuracies in points; sharpness error = |sharpness / real − 1|; periodicity × real.\n",
        results.prompts, results.bootstrap,
    );
    let done: Vec<&VariantResult> = results
        .variants
        .iter()
        .filter(|v| !v.seeds.is_empty())
        .collect();
    if !results.pending.is_empty() {
        let _ = writeln!(
            s,
            "**Not finished yet** (left out): {}.\n",
            results.pending.join(", ")
        );
    }
    if !results.baselines.is_empty() {
        let _ = writeln!(s, "Baselines (Δ: difference to the distilled two-step):\n");
        header(&mut s, &["model", "NFE", "prompts"]);
        for b in &results.baselines {
            let cells: Vec<String> = STUDY_METRICS
                .iter()
                .map(|(m, _)| interval(m, b.intervals.get(*m), false))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                b.name,
                b.network_evaluations,
                b.report.prompts,
                cells.join(" | ")
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "APT one-step (EMA), each variant's mean ± spread over its seeds:\n"
    );
    header(&mut s, &["variant", "updates × batch", "seeds"]);
    for v in &done {
        let n = v.seeds.len().max(1) as f64;
        let cells: Vec<String> = STUDY_METRICS
            .iter()
            .map(|(m, _)| {
                let values: Vec<f64> = v
                    .seeds
                    .iter()
                    .map(|x| scaled(m, read(&x.report, m)))
                    .collect();
                let mean = values.iter().sum::<f64>() / n;
                let spread = if values.len() > 1 {
                    (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                } else {
                    0.0
                };
                format!("{mean:.2} ± {spread:.2}")
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} × {} | {} | {} |",
            v.name,
            v.updates,
            v.batch,
            v.seeds.len(),
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        s,
        "\nΔ vs distilled one-step, mean ± spread over seeds (✓k / ✗k: seeds whose 95% \
         interval is better / worse):\n"
    );
    summary_table(&mut s, &done, |v| &v.summary);
    let _ = writeln!(s, "\nΔ vs distilled two-step, the same:\n");
    summary_table(&mut s, &done, |v| &v.summary_vs_two_step);
    let _ = writeln!(s, "\nPer seed, Δ vs distilled one-step [95% interval]:\n");
    per_seed_table(&mut s, &done, |x| &x.vs_reference);
    let _ = writeln!(s, "\nPer seed, Δ vs distilled two-step [95% interval]:\n");
    per_seed_table(&mut s, &done, |x| &x.vs_two_step);
    let _ = writeln!(s, "\nVariants:\n");
    for v in &results.variants {
        let set = if v.set.is_empty() {
            "(the base recipe)".to_string()
        } else {
            format!("`{}`", v.set.join("`, `"))
        };
        let init = v
            .init
            .as_ref()
            .map(|i| format!(" From init `{i}`."))
            .unwrap_or_default();
        let _ = writeln!(s, "- **{}**: {set}. {}{init}", v.name, v.about);
    }
    s
}
