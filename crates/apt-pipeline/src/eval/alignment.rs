//! Text alignment on the moving-shapes benchmark: generate a clip for each prompt and ask the
//! attribute estimator whether colour, outline and direction match the caption; sharpness,
//! temporal consistency, the Fréchet distance to the real renders and start coverage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use apt_data::estimator::estimate;
use apt_data::shapes::{ShapesConfig, Split};
use apt_flow::{Conditioning, TensorRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::metrics;
use crate::config::EvalConfig;
use crate::error::{PipelineError, Result};
use crate::text::TextConditioner;

/// Text-alignment results.
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
    /// Seconds per generated clip.
    pub seconds_per_clip: f64,
}

/// Generates one clip per prompt with `generate(noise, conditioning)` and scores it. Raising
/// `stop` ends it between batches with [`PipelineError::Interrupted`].
pub fn shapes_alignment(
    shapes: &ShapesConfig,
    text: &TextConditioner,
    eval: &EvalConfig,
    device: Device,
    stop: &AtomicBool,
    mut generate: impl FnMut(&Tensor, &Conditioning) -> apt_flow::Result<Tensor>,
) -> Result<AlignmentReport> {
    let (mut colour, mut direction, mut outline, mut empty) = (0usize, 0usize, 0usize, 0usize);
    let (mut sharpness, mut size_var, mut drift) = (Vec::new(), Vec::new(), Vec::new());
    let (mut features, mut real_features) = (Vec::new(), Vec::new());
    let (mut starts, mut real_starts, mut real_sharpness) = (Vec::new(), Vec::new(), Vec::new());
    let (h, w) = (shapes.height as usize, shapes.width as usize);
    let mut seconds = 0.0;
    let shape = [
        3,
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    ];
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
            let shapes_drawn = shapes.draw(eval.seed, i as u64, Split::All)?;
            captions.push(shapes.caption(&shapes_drawn));
            reals.push(shapes.render(&shapes_drawn));
            truths.push(shapes_drawn.into_iter().next().expect("at least one shape"));
        }
        let cond = text.batch(&captions, &[])?;
        let z = noise.normal(&[n as i64, shape[0], shape[1], shape[2], shape[3]], device);
        let start = Instant::now();
        let clips = generate(&z, &cond)?.to_device(Device::Cpu);
        seconds += start.elapsed().as_secs_f64();
        for (k, (truth, real)) in truths.iter().zip(&reals).enumerate() {
            let found = estimate(&clips.get(k as i64).clamp(-1.0, 1.0));
            let real = estimate(real);
            real_features.push(metrics::clip_features(&real, Some(truth.colour), h, w));
            if let Some(s) = metrics::main_object(&real, Some(truth.colour)) {
                real_sharpness.push(s.sharpness);
                real_starts.extend(metrics::start_position(s, h, w));
            }
            features.push(metrics::clip_features(&found, Some(truth.colour), h, w));
            match metrics::main_object(&found, Some(truth.colour)) {
                None => empty += 1,
                Some(s) => {
                    sharpness.push(s.sharpness);
                    size_var.push(metrics::size_variation(s));
                    drift.push(metrics::colour_drift(s));
                    starts.extend(metrics::start_position(s, h, w));
                    colour += usize::from(s.colour == truth.colour);
                    direction += usize::from(s.direction == Some(truth.direction));
                    outline += usize::from(s.shape == truth.shape);
                }
            }
        }
    }
    let n = eval.prompts.max(1) as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let as_tensor = |rows: &[[f64; metrics::FEATURES]]| {
        Tensor::from_slice(&rows.concat()).view([rows.len() as i64, metrics::FEATURES as i64])
    };
    let (generated, real) = (as_tensor(&features), as_tensor(&real_features));
    let frechet = metrics::frechet_distance(
        &metrics::standardise(&generated, &real, &metrics::FEATURE_SCALE_FLOOR),
        &metrics::standardise(&real, &real, &metrics::FEATURE_SCALE_FLOOR),
    );
    Ok(AlignmentReport {
        prompts: eval.prompts,
        colour_accuracy: colour as f64 / n,
        direction_accuracy: direction as f64 / n,
        shape_accuracy: outline as f64 / n,
        empty: empty as f64 / n,
        sharpness: mean(&sharpness),
        sharpness_vs_real: mean(&sharpness) / mean(&real_sharpness).max(1e-9),
        size_variation: mean(&size_var),
        colour_drift: mean(&drift),
        frechet,
        start_coverage: metrics::start_coverage(&real_starts, &starts, 4),
        seconds_per_clip: seconds / n,
    })
}
