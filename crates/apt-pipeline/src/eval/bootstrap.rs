//! Paired bootstrap intervals for a run's evaluation: every model was evaluated on the same
//! prompts and noise, so one resample of the prompt indices is applied to all of them at once
//! (and to the real renders), which keeps the comparison paired. A model evaluated on fewer
//! prompts (the multi-step teacher, when that saves time) is resampled among its own prompts,
//! and its difference to the reference on the prompts both have.
//!
//! A Fréchet distance is biased upward, and more so on a resample, whose duplicated clips
//! shrink the fitted covariances' rank: its resampled values lie almost all above the estimate,
//! so a percentile interval misses the true distance (0% coverage on Gaussians, see the tests).
//! Its intervals, and those of its differences, are therefore basic (reverse-percentile)
//! bootstrap intervals, `[2θ̂ − q₉₇.₅, 2θ̂ − q₂.₅]`, which subtract the resampling's bias
//! ([`IntervalMethod::Basic`]); means of per-clip scores keep the percentile interval.

use std::collections::BTreeMap;

use apt_flow::TensorRng;
use serde::{Deserialize, Serialize};

use super::alignment::{summarise, AlignmentReport, FeatureScale, ScoredClips};

/// A metric's estimate on all prompts and its 95% bootstrap interval over the resamples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// On every prompt.
    pub estimate: f64,
    /// 2.5% quantile.
    pub lo: f64,
    /// 97.5% quantile.
    pub hi: f64,
}

impl Interval {
    /// True when the interval lies entirely on one side of zero (for a difference: the sign
    /// is resolved at 95%).
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// The percentile interval: the 2.5% and 97.5% quantiles of the resampled values.
    #[cfg(test)]
    pub(crate) fn from_draws(estimate: f64, draws: Vec<f64>) -> Self {
        Self::with_method(estimate, draws, IntervalMethod::Percentile)
    }

    /// The interval `method` reads off the resampled values `draws` (non-finite ones skipped).
    pub fn with_method(estimate: f64, mut draws: Vec<f64>, method: IntervalMethod) -> Self {
        draws.retain(|v| v.is_finite());
        draws.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if draws.is_empty() {
                return f64::NAN;
            }
            let at = p * (draws.len() - 1) as f64;
            let (i, frac) = (at.floor() as usize, at.fract());
            let next = draws[(i + 1).min(draws.len() - 1)];
            draws[i] + (next - draws[i]) * frac
        };
        let (lo, hi) = (q(0.025), q(0.975));
        match method {
            IntervalMethod::Percentile => Self { estimate, lo, hi },
            IntervalMethod::Basic { min, max } => Self {
                estimate,
                lo: (2.0 * estimate - hi).clamp(min, max),
                hi: (2.0 * estimate - lo).clamp(min, max),
            },
        }
    }
}

/// How an interval is read off the bootstrap's resampled values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IntervalMethod {
    /// The 2.5% and 97.5% quantiles: right for a statistic that is unbiased on a resample
    /// (a mean of per-clip scores).
    Percentile,
    /// The basic (reverse-percentile) interval `[2θ̂ − q₉₇.₅, 2θ̂ − q₂.₅]`, clamped to
    /// `[min, max]`: the resamples' spread around the estimate, mirrored, so that their bias
    /// (θ* − θ̂ stands for θ̂ − θ) is subtracted. For a Fréchet distance.
    Basic {
        /// The statistic's least possible value.
        min: f64,
        /// Its largest.
        max: f64,
    },
}

impl IntervalMethod {
    /// The method for `metric`'s own interval: basic for the Fréchet distance (≥ 0), percentile
    /// otherwise.
    pub fn for_metric(metric: &str) -> Self {
        if metric == "frechet" {
            IntervalMethod::Basic {
                min: 0.0,
                max: f64::INFINITY,
            }
        } else {
            IntervalMethod::Percentile
        }
    }

    /// The method for a difference of `metric` between two models: basic, unbounded, for
    /// the Fréchet distance (the two biases need not cancel), percentile otherwise.
    pub fn for_difference(metric: &str) -> Self {
        match Self::for_metric(metric) {
            IntervalMethod::Basic { .. } => IntervalMethod::Basic {
                min: f64::NEG_INFINITY,
                max: f64::INFINITY,
            },
            m => m,
        }
    }
}

/// Reads one metric off a report.
pub type MetricReader = fn(&AlignmentReport) -> f64;

/// The bootstrapped metrics, by name, and how each is read off a report.
/// (`sharpness_error` is `|sharpness_vs_real − 1|`: blur and over-sharpening both count.)
pub const METRICS: [(&str, MetricReader); 8] = [
    ("colour_accuracy", |r| r.colour_accuracy),
    ("direction_accuracy", |r| r.direction_accuracy),
    ("shape_accuracy", |r| r.shape_accuracy),
    ("sharpness_vs_real", |r| r.sharpness_vs_real),
    ("sharpness_error", |r| (r.sharpness_vs_real - 1.0).abs()),
    ("frechet", |r| r.frechet),
    ("start_coverage", |r| r.start_coverage),
    ("periodicity", |r| r.periodicity),
];

/// `metric` (a [`METRICS`] name) read off `report`; NaN for an unknown name.
pub fn metric_value(report: &AlignmentReport, metric: &str) -> f64 {
    METRICS
        .iter()
        .find(|(m, _)| *m == metric)
        .map_or(f64::NAN, |(_, read)| read(report))
}

/// One model's intervals: each metric, its difference to the reference row, and (for a row
/// with a control, e.g. APT two-step against distilled two-step) to that control.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelIntervals {
    /// Metric → interval.
    pub metrics: BTreeMap<String, Interval>,
    /// Metric → interval of (this model − the reference), on the prompts both have.
    pub vs_reference: BTreeMap<String, Interval>,
    /// The control row's name, when this row has one besides the reference.
    #[serde(default)]
    pub control: Option<String>,
    /// Metric → interval of (this model − its control).
    #[serde(default)]
    pub vs_control: BTreeMap<String, Interval>,
}

/// Resamples of `0..n` for every distinct prompt count, `draws` of each, from `seed`.
fn resamples(counts: &[usize], draws: usize, seed: u64) -> BTreeMap<usize, Vec<Vec<usize>>> {
    let mut distinct: Vec<usize> = counts.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut rng = TensorRng::new(seed, 0x0b00_7572);
    distinct
        .into_iter()
        .map(|n| {
            let sets = (0..draws)
                .map(|_| {
                    (0..n)
                        .map(|_| ((rng.uniform_scalar() * n as f64) as usize).min(n - 1))
                        .collect()
                })
                .collect();
            (n, sets)
        })
        .collect()
}

/// Every model's reports on the resamples, computed once per (model, prompt count).
struct Reports<'a> {
    models: &'a [&'a ScoredClips],
    sets: BTreeMap<usize, Vec<Vec<usize>>>,
    scale: FeatureScale,
    cache: BTreeMap<(usize, usize), Vec<AlignmentReport>>,
}

impl Reports<'_> {
    fn on_all(&self, model: usize, n: usize) -> AlignmentReport {
        summarise(self.models[model], &(0..n).collect::<Vec<_>>(), &self.scale)
    }

    fn on_resamples(&mut self, model: usize, n: usize) -> &[AlignmentReport] {
        let (models, sets, scale) = (self.models, &self.sets, &self.scale);
        self.cache.entry((model, n)).or_insert_with(|| {
            sets[&n]
                .iter()
                .map(|idx| summarise(models[model], idx, scale))
                .collect()
        })
    }

    /// Intervals of `a − b` on the prompts both have.
    fn difference(&mut self, a: usize, b: usize) -> BTreeMap<String, Interval> {
        let n = self.models[a].clips.len().min(self.models[b].clips.len());
        let (full_a, full_b) = (self.on_all(a, n), self.on_all(b, n));
        let ra = self.on_resamples(a, n).to_vec();
        let rb = self.on_resamples(b, n);
        METRICS
            .iter()
            .map(|(name, read)| {
                let diffs = ra.iter().zip(rb).map(|(x, y)| read(x) - read(y)).collect();
                let estimate = read(&full_a) - read(&full_b);
                let method = IntervalMethod::for_difference(name);
                (
                    name.to_string(),
                    Interval::with_method(estimate, diffs, method),
                )
            })
            .collect()
    }
}

/// Paired bootstrap over `draws` resamples of the prompts: every model's metrics, their
/// differences to `models[reference]`, and for each `(model, control)` in `controls` the
/// difference to that control. Features are scaled by the real renders of the model with the
/// most prompts.
pub fn paired_bootstrap(
    models: &[&ScoredClips],
    reference: usize,
    controls: &[(usize, usize, String)],
    draws: usize,
    seed: u64,
) -> Vec<ModelIntervals> {
    let Some(scale) = FeatureScale::common(models) else {
        return Vec::new();
    };
    let counts: Vec<usize> = models.iter().map(|m| m.clips.len()).collect();
    let mut reports = Reports {
        models,
        sets: resamples(&counts, draws, seed),
        scale,
        cache: BTreeMap::new(),
    };
    (0..models.len())
        .map(|m| {
            let n = models[m].clips.len();
            let full = reports.on_all(m, n);
            let own = reports.on_resamples(m, n).to_vec();
            let metrics = METRICS
                .iter()
                .map(|(name, read)| {
                    let values = own.iter().map(read).collect();
                    let method = IntervalMethod::for_metric(name);
                    (
                        name.to_string(),
                        Interval::with_method(read(&full), values, method),
                    )
                })
                .collect();
            let control = controls.iter().find(|(a, _, _)| *a == m);
            ModelIntervals {
                metrics,
                vs_reference: reports.difference(m, reference),
                control: control.map(|(_, _, name)| name.clone()),
                vs_control: control
                    .map(|(a, b, _)| reports.difference(*a, *b))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_and_skip_non_finite_draws() {
        let draws: Vec<f64> = (0..=100).map(f64::from).chain([f64::NAN]).collect();
        let i = Interval::from_draws(50.0, draws);
        assert!(
            (i.lo - 2.5).abs() < 1e-9 && (i.hi - 97.5).abs() < 1e-9,
            "{i:?}"
        );
        assert!(i.excludes_zero());
        let i = Interval::from_draws(0.0, vec![-1.0, 1.0]);
        assert!(!i.excludes_zero());
    }

    use crate::eval::alignment::{ClipScore, RealScore};
    use crate::eval::metrics::FEATURES;

    /// `n` clips whose features are the real ones plus `shift` on feature 0, and whose
    /// colour is right on every `every`-th clip.
    fn scored(n: usize, shift: f64, every: usize) -> ScoredClips {
        let mut rng = TensorRng::new(11, 0);
        let real: Vec<RealScore> = (0..n)
            .map(|_| {
                let mut features = [0.0; FEATURES];
                for f in features.iter_mut() {
                    *f = rng.uniform_scalar();
                }
                RealScore {
                    features,
                    sharpness: Some(1.0),
                    start: Some((rng.uniform_scalar(), rng.uniform_scalar())),
                    periodic_energy: 0.01,
                }
            })
            .collect();
        let clips = real
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut features = r.features;
                features[0] += shift;
                ClipScore {
                    found: true,
                    colour: i % every == 0,
                    direction: true,
                    shape: true,
                    sharpness: Some(0.8),
                    size_variation: Some(0.1),
                    colour_drift: Some(0.0),
                    start: r.start,
                    features,
                    periodic_energy: 0.02,
                }
            })
            .collect();
        ScoredClips {
            clips,
            real,
            seconds_per_clip: 0.0,
        }
    }

    #[test]
    fn a_model_against_itself_differs_by_exactly_zero_and_a_shift_is_resolved() {
        let (a, twin, shifted) = (
            scored(128, 0.0, 1),
            scored(128, 0.0, 1),
            scored(128, 0.5, 2),
        );
        let fewer = ScoredClips {
            clips: shifted.clips[..64].to_vec(),
            real: shifted.real[..64].to_vec(),
            seconds_per_clip: 0.0,
        };
        let models = [&a, &twin, &shifted, &fewer];
        let out = paired_bootstrap(&models, 0, &[(2, 1, "twin".into())], 300, 5);
        assert_eq!(out.len(), 4);
        for name in ["frechet", "colour_accuracy", "sharpness_vs_real"] {
            let d = out[1].vs_reference[name];
            assert_eq!((d.estimate, d.lo, d.hi), (0.0, 0.0, 0.0), "{name}: {d:?}");
        }
        // Shifting one standardised feature by half a unit costs FD; the paired interval of the
        // difference excludes 0, and so does the colour accuracy's (1 vs 0.5).
        let fd = out[2].vs_reference["frechet"];
        assert!(fd.estimate > 0.0 && fd.excludes_zero(), "{fd:?}");
        let colour = out[2].vs_reference["colour_accuracy"];
        assert!(
            (colour.estimate + 0.5).abs() < 1e-12 && colour.hi < 0.0,
            "{colour:?}"
        );
        assert_eq!(out[2].control.as_deref(), Some("twin"));
        assert_eq!(out[2].vs_control["frechet"].estimate, fd.estimate);
        // A model on fewer prompts is compared on the prompts both have.
        assert_eq!(out[3].metrics["colour_accuracy"].estimate, 0.5);
        assert!(out[3].vs_reference["frechet"].excludes_zero());
        // … and its estimate is on the common scale, the one its interval is on.
        let common = FeatureScale::common(&models).unwrap();
        let on_common = summarise(&fewer, &(0..64).collect::<Vec<_>>(), &common);
        assert_eq!(out[3].metrics["frechet"].estimate, on_common.frechet);
        // Generated clips carry twice the real renders' periodic energy.
        let m = out[0].metrics["periodicity"];
        assert!((m.estimate - 2.0).abs() < 1e-12 && m.lo == m.hi, "{m:?}");
    }

    #[test]
    fn resamples_are_reproducible_and_cover_their_range() {
        let a = resamples(&[8, 4, 8], 50, 3);
        assert_eq!(a.len(), 2);
        assert_eq!(a, resamples(&[4, 8], 50, 3));
        assert!(a[&4].iter().flatten().all(|&i| i < 4));
        let seen: std::collections::BTreeSet<usize> = a[&8].iter().flatten().copied().collect();
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn basic_intervals_mirror_the_draws_around_the_estimate_and_respect_bounds() {
        let draws: Vec<f64> = (0..=100).map(|k| 5.0 + 0.04 * k as f64).collect();
        let fd = Interval::with_method(5.0, draws.clone(), IntervalMethod::for_metric("frechet"));
        assert!((fd.hi - (10.0 - 5.1)).abs() < 1e-9, "{fd:?}");
        assert!((fd.lo - 1.1).abs() < 1e-9, "{fd:?}");
        let far = Interval::with_method(1.0, draws.clone(), IntervalMethod::for_metric("frechet"));
        assert_eq!(far.lo, 0.0, "a distance's interval stops at 0");
        let diff = IntervalMethod::for_difference("frechet");
        assert!(Interval::with_method(1.0, draws.clone(), diff).lo < 0.0);
        let acc = IntervalMethod::for_metric("colour_accuracy");
        assert_eq!(acc, IntervalMethod::Percentile);
        assert_eq!(
            Interval::with_method(5.0, draws.clone(), acc),
            Interval::from_draws(5.0, draws)
        );
    }
}
