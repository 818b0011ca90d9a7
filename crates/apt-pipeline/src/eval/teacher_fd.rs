//! Judging a run on any data: a Fréchet distance on the frozen teacher's own features between
//! each generator's clips and real clips with the same captions.
//!
//! **The features.** A clip `x` (in the models' space: pixels, or normalised VAE latents) is
//! noised to `x_t = (1 − t)·x + t·ε` at `t =` [`FEATURE_TIME`] with a noise fixed per clip
//! index (the same for the real clip and every generator's clip of that caption), run through
//! the teacher with the empty caption up to block `round(0.44·depth)` — the first of the
//! discriminator's taps, the depth whose features APT's D starts from — and its visual tokens
//! are mean-pooled (`[D]`). A seeded orthonormal projection to [`ReportSection::feature_dim`]
//! dimensions (64 by default) keeps the covariance estimable from a few hundred clips.
//!
//! Why the teacher: it is the one network that knows this data (its own training set); the
//! small `t` keeps detail (blur and noise move the features, tested) and the empty caption
//! keeps the caption out of the feature. Limits: it is no perceptual standard (use FVD with an
//! I3D file for that), it inherits the teacher's blind spots, and a generator distilled from
//! the same teacher may be judged leniently where both share a fault. Distances are comparable
//! within a run (same teacher, clips and noise), not across runs.
//!
//! [`ReportSection::feature_dim`]: crate::config::ReportSection::feature_dim

use apt_flow::{Conditioning, TensorRng};
use apt_mmdit::Model;
use tch::{Device, Kind, Tensor};

use super::metrics::frechet_distance;
use crate::error::{config_error, Result};

/// The time the clips are noised to before the teacher reads them.
pub const FEATURE_TIME: f64 = 0.2;

/// The teacher's pooled features of clips, read at one block.
pub struct TeacherFeatures<'a> {
    teacher: &'a Model,
    tap: usize,
    null: Conditioning,
    projection: Tensor,
    seed: u64,
    device: Device,
}

impl<'a> TeacherFeatures<'a> {
    /// Features of `teacher` at block `round(0.44·depth)`, with the empty caption `null`
    /// (`[1, L, D]`, `[1, P]`), projected to `dim` dimensions (at most the model's width);
    /// `seed` fixes the projection and the per-clip noise.
    pub fn new(
        teacher: &'a Model,
        null: Conditioning,
        dim: usize,
        seed: u64,
        device: Device,
    ) -> Self {
        let depth = teacher.config().depth();
        let tap = ((0.44 * depth as f64).round() as usize).clamp(1, depth);
        let width = teacher.config().hidden_size() as i64;
        let k = (dim as i64).min(width);
        let gaussian = TensorRng::new(seed, 11).normal(&[width, k], Device::Cpu);
        let (q, _) = Tensor::linalg_qr(&gaussian.to_kind(Kind::Double), "reduced");
        Self {
            teacher,
            tap,
            null,
            projection: q.to_kind(Kind::Float).to_device(device),
            seed,
            device,
        }
    }

    /// The block the features are read at (1-based).
    pub fn tap(&self) -> usize {
        self.tap
    }

    /// Feature dimensions.
    pub fn dim(&self) -> i64 {
        self.projection.size()[1]
    }

    /// Features `[N, dim]` of clips `x` `[N, C, T, H, W]` (the models' space) whose clip
    /// indices start at `first`; `noise_stream` picks the noise (0: the evaluation's; another
    /// value draws independent noise, for the real-vs-real floor).
    pub fn of(&self, x: &Tensor, first: u64, noise_stream: u64) -> Result<Tensor> {
        let n = x.size()[0];
        let shape: Vec<i64> = x.size()[1..].to_vec();
        let eps: Vec<Tensor> = (0..n as u64)
            .map(|i| {
                TensorRng::new(self.seed ^ (noise_stream << 32), 12 + first + i)
                    .normal(&shape, self.device)
            })
            .collect();
        let eps = Tensor::stack(&eps, 0);
        let x = x.to_device(self.device).to_kind(Kind::Float);
        let xt = &x * (1.0 - FEATURE_TIME) + eps * FEATURE_TIME;
        let t = Tensor::full([n], FEATURE_TIME, (Kind::Float, self.device));
        let ctx = self.null.context.expand(
            [n, self.null.context.size()[1], self.null.context.size()[2]],
            false,
        );
        let pooled = self
            .null
            .pooled
            .expand([n, self.null.pooled.size()[1]], false);
        let tapped = tch::no_grad(|| {
            self.teacher
                .forward_with_taps(&xt, &t, &ctx, &pooled, &[self.tap], false)
        })?;
        let tokens = tapped.taps[0].to_kind(Kind::Float);
        Ok(tokens
            .mean_dim(1, false, Kind::Float)
            .matmul(&self.projection)
            .to_device(Device::Cpu))
    }
}

/// The distance of each features set `[N, k]` to `real` `[N, k]`, checking that there are
/// more clips than dimensions (a full-rank covariance); `key` names the setting to raise.
pub fn teacher_frechet(generated: &Tensor, real: &Tensor, key: &str) -> Result<f64> {
    let (n, k) = (real.size()[0], real.size()[1]);
    if n <= k {
        return Err(config_error(
            key,
            format!(
                "gives {n} clips for {k}-dimensional teacher features: a Fréchet distance needs \
                 more clips than dimensions (raise report.prompts or lower report.feature_dim)"
            ),
        ));
    }
    Ok(frechet_distance(generated, real))
}
