//! One generator on the moving-shapes benchmark: generate a clip for each prompt, read it back
//! with the attribute estimator, and keep what was read per clip ([`ClipScore`], next to the
//! real render's [`RealScore`]), so that a set of clips can be summarised
//! ([`AlignmentReport`]) on any subset of the prompts — all of them, or a bootstrap resample.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use apt_data::estimator::estimate;
use apt_data::shapes::{ShapesConfig, Split};
use apt_flow::{Conditioning, TensorRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::metrics::{self, FEATURES};
use crate::config::EvalConfig;
use crate::error::{PipelineError, Result};
use crate::latent::Space;
use crate::text::TextConditioner;

/// Text-alignment results of a set of clips.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignmentReport {
    /// Prompts evaluated.
    pub prompts: usize,
    /// Share of clips whose main object has the caption's colour.
    pub colour_accuracy: f64,
    /// … moves in the caption's direction.
    pub direction_accuracy: f64,
    /// … has the caption's outline.
    pub shape_accuracy: f64,
    /// Share of clips where the estimator found no object at all.
    pub empty: f64,
    /// Mean edge sharpness of the objects found (boundary / partially covered pixels; about 1
    /// for crisp renders, lower when blurred).
    pub sharpness: f64,
    /// `sharpness` over the same measure on the real renders of the same prompts.
    #[serde(default)]
    pub sharpness_vs_real: f64,
    /// Temporal consistency of size: mean over clips of the object's area std / mean across
    /// frames (real renders: about 0.0–0.1, from anti-aliasing and clipping at the border).
    #[serde(default)]
    pub size_variation: f64,
    /// Temporal consistency of colour: mean distance of a frame's object colour from the
    /// clip's mean object colour (RGB in [0, 1]).
    #[serde(default)]
    pub colour_drift: f64,
    /// Fréchet distance to the real renders of the same prompts on the estimator features
    /// ([`super::metrics`]), standardised by the real set.
    #[serde(default)]
    pub frechet: f64,
    /// Share of the real set's 4×4 start-position cells the generated set also starts in.
    #[serde(default)]
    pub start_coverage: f64,
    /// Energy of the patch-periodic component over that of the real renders
    /// ([`metrics::patch_periodic_energy`]; 1 = as real, a patch-grid artefact is above).
    #[serde(default)]
    pub periodicity: f64,
    /// Seconds per generated clip.
    pub seconds_per_clip: f64,
}

/// What the estimator read off one generated clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipScore {
    /// An object was found.
    pub found: bool,
    /// The main object has the caption's colour.
    pub colour: bool,
    /// … moves in the caption's direction.
    pub direction: bool,
    /// … has the caption's outline.
    pub shape: bool,
    /// Edge sharpness of the main object.
    pub sharpness: Option<f64>,
    /// Its area variation over frames.
    pub size_variation: Option<f64>,
    /// Its colour drift over frames.
    pub colour_drift: Option<f64>,
    /// Its start position `(x / W, y / H)`.
    pub start: Option<(f64, f64)>,
    /// The feature vector ([`metrics::clip_features`]).
    pub features: [f64; FEATURES],
    /// Energy of the patch-periodic component.
    pub periodic_energy: f64,
}

/// What the estimator reads off the real render of a prompt (the reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealScore {
    /// The feature vector.
    pub features: [f64; FEATURES],
    /// Edge sharpness of the main object.
    pub sharpness: Option<f64>,
    /// Its start position.
    pub start: Option<(f64, f64)>,
    /// Energy of the patch-periodic component.
    pub periodic_energy: f64,
}

/// Every clip of one generator and the real renders of the same prompts.
#[derive(Debug, Clone)]
pub struct ScoredClips {
    /// Per prompt, in order.
    pub clips: Vec<ClipScore>,
    /// The real renders, per prompt.
    pub real: Vec<RealScore>,
    /// Generation seconds per clip.
    pub seconds_per_clip: f64,
}

/// The patch grid the periodicity is measured on (the model's `(ph, pw)`).
pub type PatchGrid = [usize; 2];

/// The spatial patch of a model: its `(ph, pw)`.
pub fn patch_grid(cfg: &apt_mmdit::ModelConfig) -> PatchGrid {
    let [_, ph, pw] = cfg.patch_size();
    [ph, pw]
}

/// Generates one clip per prompt with `generate(noise, conditioning)` (noise and output in
/// `space`: latents are decoded before scoring) and reads every clip (and the real render of
/// its prompt) back. `patch` is the model's patch in its own space. Raising `stop` ends it
/// between batches with [`PipelineError::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn score_clips(
    shapes: &ShapesConfig,
    text: &TextConditioner,
    eval: &EvalConfig,
    space: &Space,
    patch: PatchGrid,
    device: Device,
    stop: &AtomicBool,
    mut generate: impl FnMut(&Tensor, &Conditioning) -> apt_flow::Result<Tensor>,
) -> Result<ScoredClips> {
    let (h, w) = (shapes.height as usize, shapes.width as usize);
    let shape = space.model_shape([
        3,
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    ]);
    let patch = space.pixel_patch(patch);
    let (mut clips, mut real_scores) = (Vec::new(), Vec::new());
    let mut seconds = 0.0;
    let mut noise = TensorRng::new(eval.seed, 1);
    for first in (0..eval.prompts).step_by(eval.batch.max(1)) {
        if stop.load(Ordering::SeqCst) {
            return Err(PipelineError::Interrupted);
        }
        let n = eval.batch.min(eval.prompts - first);
        let mut captions = Vec::with_capacity(n);
        let mut truths = Vec::with_capacity(n);
        let mut reals = Vec::with_capacity(n);
        for i in first..first + n {
            let drawn = shapes.draw(eval.seed, i as u64, Split::All)?;
            captions.push(shapes.caption(&drawn));
            reals.push(shapes.render(&drawn));
            truths.push(drawn.into_iter().next().expect("at least one shape"));
        }
        let cond = text.batch(&captions, &[])?;
        let z = noise.normal(&[n as i64, shape[0], shape[1], shape[2], shape[3]], device);
        let start = Instant::now();
        let generated = space
            .to_pixels(&generate(&z, &cond)?)?
            .to_device(Device::Cpu);
        seconds += start.elapsed().as_secs_f64();
        for (k, (truth, real)) in truths.iter().zip(&reals).enumerate() {
            let clip = generated.get(k as i64).clamp(-1.0, 1.0);
            let found = estimate(&clip);
            let real_found = estimate(real);
            let real_main = metrics::main_object(&real_found, Some(truth.colour));
            real_scores.push(RealScore {
                features: metrics::clip_features(&real_found, Some(truth.colour), h, w),
                sharpness: real_main.map(|s| s.sharpness),
                start: real_main.and_then(|s| metrics::start_position(s, h, w)),
                periodic_energy: metrics::patch_periodic_energy(real, patch),
            });
            let main = metrics::main_object(&found, Some(truth.colour));
            clips.push(ClipScore {
                found: main.is_some(),
                colour: main.is_some_and(|s| s.colour == truth.colour),
                direction: main.is_some_and(|s| s.direction == Some(truth.direction)),
                shape: main.is_some_and(|s| s.shape == truth.shape),
                sharpness: main.map(|s| s.sharpness),
                size_variation: main.map(metrics::size_variation),
                colour_drift: main.map(metrics::colour_drift),
                start: main.and_then(|s| metrics::start_position(s, h, w)),
                features: metrics::clip_features(&found, Some(truth.colour), h, w),
                periodic_energy: metrics::patch_periodic_energy(&clip, patch),
            });
        }
    }
    Ok(ScoredClips {
        seconds_per_clip: seconds / eval.prompts.max(1) as f64,
        clips,
        real: real_scores,
    })
}

/// The real set's per-feature mean and standard deviation (floored): the fixed scale every
/// Fréchet distance against it is measured in.
#[derive(Debug)]
pub struct FeatureScale {
    mean: Tensor,
    std: Tensor,
}

fn feature_rows(rows: &[[f64; FEATURES]]) -> Tensor {
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, FEATURES as i64])
}

impl FeatureScale {
    /// The scale of the real renders `real`.
    pub fn of(real: &[RealScore]) -> Self {
        let rows: Vec<[f64; FEATURES]> = real.iter().map(|r| r.features).collect();
        let (mean, std) =
            metrics::feature_scale(&feature_rows(&rows), &metrics::FEATURE_SCALE_FLOOR);
        Self { mean, std }
    }

    /// The one scale for comparing `sets`: that of the real renders of the set with the most
    /// prompts. Every row of a table, a teacher on fewer prompts included, is summarised with
    /// it, so that its estimate and its bootstrap interval measure the same distance (a
    /// Fréchet distance changes with the standardisation: the 25-step teacher's on its own 128
    /// prompts' scale read 4.54, on the 512 prompts' 5.75).
    pub fn common(sets: &[&ScoredClips]) -> Option<Self> {
        sets.iter()
            .max_by_key(|s| s.clips.len())
            .map(|s| Self::of(&s.real))
    }

    fn apply(&self, rows: &[[f64; FEATURES]]) -> Tensor {
        (feature_rows(rows).to_kind(tch::Kind::Double) - &self.mean) / &self.std
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The report of the clips at prompt indices `idx` (repeats allowed: a bootstrap resample),
/// against the real renders of the same indices, features in `scale`.
pub fn summarise(scored: &ScoredClips, idx: &[usize], scale: &FeatureScale) -> AlignmentReport {
    let clips: Vec<&ClipScore> = idx.iter().map(|&i| &scored.clips[i]).collect();
    let real: Vec<&RealScore> = idx.iter().map(|&i| &scored.real[i]).collect();
    let n = idx.len().max(1) as f64;
    let share = |f: fn(&ClipScore) -> bool| clips.iter().filter(|c| f(c)).count() as f64 / n;
    let some = |f: fn(&ClipScore) -> Option<f64>| -> Vec<f64> {
        clips.iter().filter_map(|c| f(c)).collect()
    };
    let sharpness = mean(&some(|c| c.sharpness));
    let real_sharpness = mean(&real.iter().filter_map(|r| r.sharpness).collect::<Vec<_>>());
    let generated: Vec<[f64; FEATURES]> = clips.iter().map(|c| c.features).collect();
    let reference: Vec<[f64; FEATURES]> = real.iter().map(|r| r.features).collect();
    let frechet = metrics::frechet_distance(&scale.apply(&generated), &scale.apply(&reference));
    let starts: Vec<(f64, f64)> = clips.iter().filter_map(|c| c.start).collect();
    let real_starts: Vec<(f64, f64)> = real.iter().filter_map(|r| r.start).collect();
    let energy = mean(&clips.iter().map(|c| c.periodic_energy).collect::<Vec<_>>());
    let real_energy = mean(&real.iter().map(|r| r.periodic_energy).collect::<Vec<_>>());
    AlignmentReport {
        prompts: idx.len(),
        colour_accuracy: share(|c| c.colour),
        direction_accuracy: share(|c| c.direction),
        shape_accuracy: share(|c| c.shape),
        empty: share(|c| !c.found),
        sharpness,
        sharpness_vs_real: sharpness / real_sharpness.max(1e-9),
        size_variation: mean(&some(|c| c.size_variation)),
        colour_drift: mean(&some(|c| c.colour_drift)),
        frechet,
        start_coverage: metrics::start_coverage(&real_starts, &starts, 4),
        periodicity: energy / real_energy.max(1e-12),
        seconds_per_clip: scored.seconds_per_clip,
    }
}

/// Generates and scores one clip per prompt (see [`score_clips`]) and summarises all of them.
#[allow(clippy::too_many_arguments)]
pub fn shapes_alignment(
    shapes: &ShapesConfig,
    text: &TextConditioner,
    eval: &EvalConfig,
    space: &Space,
    patch: PatchGrid,
    device: Device,
    stop: &AtomicBool,
    generate: impl FnMut(&Tensor, &Conditioning) -> apt_flow::Result<Tensor>,
) -> Result<AlignmentReport> {
    let scored = score_clips(shapes, text, eval, space, patch, device, stop, generate)?;
    let all: Vec<usize> = (0..scored.clips.len()).collect();
    Ok(summarise(&scored, &all, &FeatureScale::of(&scored.real)))
}
