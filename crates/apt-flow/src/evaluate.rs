//! Text alignment on the moving-shapes benchmark: generate a clip for each prompt and ask the
//! attribute estimator whether colour, outline and direction match the caption.

use std::time::Instant;

use apt_data::estimator::estimate;
use apt_data::shapes::{ShapesConfig, Split};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::Result;
use crate::flow::Conditioning;
use crate::rng::TensorRng;
use crate::sampler::SamplerConfig;
use crate::text::TextConditioner;

/// How to evaluate a generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Prompts (moving-shapes captions of samples `0..prompts` of the eval seed).
    #[serde(default = "default_prompts")]
    pub prompts: usize,
    /// Seed of the prompts and the noise.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The teacher's sampler (steps, method, shift, CFG).
    pub sampler: SamplerConfig,
    /// Prompts per generation batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_prompts() -> usize {
    32
}
fn default_seed() -> u64 {
    77_777
}
fn default_batch() -> usize {
    16
}

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
    /// Seconds per generated clip.
    pub seconds_per_clip: f64,
}

/// Generates one clip per prompt with `generate(noise, conditioning)` and scores it.
pub fn shapes_alignment(
    shapes: &ShapesConfig,
    text: &TextConditioner,
    eval: &EvalConfig,
    device: Device,
    mut generate: impl FnMut(&Tensor, &Conditioning) -> Result<Tensor>,
) -> Result<AlignmentReport> {
    let (mut colour, mut direction, mut outline, mut empty) = (0usize, 0usize, 0usize, 0usize);
    let mut sharpness = Vec::new();
    let start = Instant::now();
    let shape = [
        3,
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    ];
    let mut noise = TensorRng::new(eval.seed, 1);
    for first in (0..eval.prompts).step_by(eval.batch.max(1)) {
        let n = eval.batch.min(eval.prompts - first);
        let mut captions = Vec::with_capacity(n);
        let mut truths = Vec::with_capacity(n);
        for i in first..first + n {
            let shapes_drawn = shapes.draw(eval.seed, i as u64, Split::All)?;
            captions.push(shapes.caption(&shapes_drawn));
            truths.push(shapes_drawn.into_iter().next().expect("at least one shape"));
        }
        let cond = text.batch(&captions, &[])?;
        let z = noise.normal(&[n as i64, shape[0], shape[1], shape[2], shape[3]], device);
        let clips = generate(&z, &cond)?.to_device(Device::Cpu);
        for (k, truth) in truths.iter().enumerate() {
            let found = estimate(&clips.get(k as i64).clamp(-1.0, 1.0));
            match found
                .shapes
                .iter()
                .find(|s| s.colour == truth.colour)
                .or(found.shapes.first())
            {
                None => empty += 1,
                Some(s) => {
                    sharpness.push(s.sharpness);
                    colour += usize::from(s.colour == truth.colour);
                    direction += usize::from(s.direction == Some(truth.direction));
                    outline += usize::from(s.shape == truth.shape);
                }
            }
        }
    }
    let n = eval.prompts.max(1) as f64;
    Ok(AlignmentReport {
        prompts: eval.prompts,
        colour_accuracy: colour as f64 / n,
        direction_accuracy: direction as f64 / n,
        shape_accuracy: outline as f64 / n,
        empty: empty as f64 / n,
        sharpness: sharpness.iter().sum::<f64>() / sharpness.len().max(1) as f64,
        seconds_per_clip: start.elapsed().as_secs_f64() / n,
    })
}
