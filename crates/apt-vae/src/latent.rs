//! What an encoder returns and what the diffusion model sees: the diagonal-Gaussian posterior
//! over latents and the normalisation between VAE latents and model latents.

use tch::{Kind, Tensor};

/// diffusers' `DiagonalGaussianDistribution`: the encoder's moments split into a mean and a
/// log-variance (clamped to [-30, 20]) along the channel dimension.
#[derive(Debug)]
pub struct Posterior {
    /// The mean (what diffusers' `latent_dist.mean` / `.mode()` returns).
    pub mean: Tensor,
    /// The clamped log-variance.
    pub logvar: Tensor,
}

impl Posterior {
    /// Splits `moments` [B, 2z, …] into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Self {
        let z = moments.size()[1] / 2;
        Self {
            mean: moments.narrow(1, 0, z),
            logvar: moments.narrow(1, z, z).clamp(-30.0, 20.0),
        }
    }

    /// The mode (= the mean).
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// A reparameterised sample `mean + std · ε` (differentiable in mean and log-variance).
    pub fn sample(&self) -> Tensor {
        &self.mean + (&self.logvar * 0.5).exp() * self.mean.randn_like()
    }

    /// KL divergence to N(0, I), summed over every dimension but the batch: [B].
    pub fn kl(&self) -> Tensor {
        let dims: Vec<i64> = (1..self.mean.dim() as i64).collect();
        ((self.mean.square() + self.logvar.exp() - 1.0 - &self.logvar) * 0.5).sum_dim_intlist(
            dims,
            false,
            Kind::Float,
        )
    }
}

/// The map between a VAE's latents and the latents a diffusion model is trained on
/// (`model = normalize(vae)`, `vae = denormalize(model)`), as diffusers' pipelines apply it.
#[derive(Debug, Clone, PartialEq)]
pub enum LatentNorm {
    /// Wan: `(z − mean_c) / std_c` per channel.
    PerChannel {
        /// Per-channel mean.
        mean: Vec<f64>,
        /// Per-channel standard deviation.
        std: Vec<f64>,
    },
    /// SD3 / FLUX (shift) and SD1/SDXL (no shift): `(z − shift) · scaling`.
    ScaleShift {
        /// Multiplier.
        scaling: f64,
        /// Subtracted first.
        shift: f64,
    },
}

fn per_channel(values: &[f64], like: &Tensor) -> Tensor {
    let mut shape = vec![1i64; like.dim()];
    shape[1] = values.len() as i64;
    Tensor::from_slice(values)
        .to_kind(like.kind())
        .to_device(like.device())
        .reshape(shape)
}

impl LatentNorm {
    /// VAE latents [B, C, …] → model latents.
    pub fn normalize(&self, z: &Tensor) -> Tensor {
        match self {
            LatentNorm::PerChannel { mean, std } => {
                (z - per_channel(mean, z)) / per_channel(std, z)
            }
            LatentNorm::ScaleShift { scaling, shift } => (z - *shift) * *scaling,
        }
    }

    /// Model latents [B, C, …] → VAE latents.
    pub fn denormalize(&self, z: &Tensor) -> Tensor {
        match self {
            LatentNorm::PerChannel { mean, std } => z * per_channel(std, z) + per_channel(mean, z),
            LatentNorm::ScaleShift { scaling, shift } => z / *scaling + *shift,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tch::Device;

    proptest! {
        #[test]
        fn normalize_then_denormalize_is_identity(seed in 0i64..1000, scaling in 0.1f64..3.0, shift in -1.0f64..1.0) {
            tch::manual_seed(seed);
            let z = Tensor::randn([2, 3, 2, 4, 4], (Kind::Float, Device::Cpu));
            for norm in [
                LatentNorm::ScaleShift { scaling, shift },
                LatentNorm::PerChannel { mean: vec![shift, 0.3, -0.2], std: vec![scaling, 0.5, 2.0] },
            ] {
                let back = norm.denormalize(&norm.normalize(&z));
                let diff = (back - &z).abs().max().double_value(&[]);
                prop_assert!(diff < 1e-5, "{:?}: {}", norm, diff);
            }
        }
    }

    #[test]
    fn per_channel_statistics_become_zero_mean_unit_std() {
        tch::manual_seed(1);
        let mean = [1.0, -2.0];
        let std = [0.5, 3.0];
        let z = Tensor::randn([4096, 2], (Kind::Float, Device::Cpu)) * Tensor::from_slice(&std)
            + Tensor::from_slice(&mean);
        let norm = LatentNorm::PerChannel {
            mean: mean.to_vec(),
            std: std.to_vec(),
        };
        let n = norm.normalize(&z);
        let m = n.mean_dim(0, false, Kind::Float);
        let s = n.std_dim(0, true, false);
        assert!(m.abs().max().double_value(&[]) < 0.06);
        assert!((s - 1.0).abs().max().double_value(&[]) < 0.06);
    }

    #[test]
    fn kl_is_zero_for_the_prior_and_positive_otherwise() {
        let zeros = Tensor::zeros([2, 4, 3, 3], (Kind::Float, Device::Cpu));
        let prior = Posterior::from_moments(&zeros);
        assert_eq!(prior.kl().abs().max().double_value(&[]), 0.0);
        let off = Posterior::from_moments(&(zeros + 0.5));
        assert!(off.kl().min().double_value(&[]) > 0.0);
    }
}
