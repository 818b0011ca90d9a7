//! Explicit, serialisable randomness: every random tensor in training and sampling comes from
//! a ChaCha stream whose state is saved in checkpoints, so a resumed run draws exactly what an
//! uninterrupted run would have drawn, on any device and whatever else touched libtorch's
//! global generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// A seeded random stream producing tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRng {
    rng: ChaCha8Rng,
}

impl TensorRng {
    /// Stream `stream` of seed `seed` (different streams are independent).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self { rng }
    }

    /// Standard normal samples of `shape` (f32) on `device`.
    pub fn normal(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_slice(&v).view(shape).to_device(device)
    }

    /// Uniform samples in [0, 1) of `shape` (f32) on `device`.
    pub fn uniform(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.gen::<f32>()).collect();
        Tensor::from_slice(&v).view(shape).to_device(device)
    }

    /// One uniform number in [0, 1).
    pub fn uniform_scalar(&mut self) -> f64 {
        self.rng.gen()
    }

    /// Bernoulli(p) mask of `n` booleans.
    pub fn bernoulli(&mut self, n: usize, p: f64) -> Vec<bool> {
        (0..n).map(|_| self.rng.gen::<f64>() < p).collect()
    }

    /// Standard normal tensor of `shape` (f32) for one seed (stream 0 of `seed`): deterministic
    /// noise for sampling.
    pub fn seeded_normal(seed: u64, shape: &[i64], device: Device) -> Tensor {
        Self::new(seed, 0).normal(shape, device)
    }

    /// The underlying generator.
    pub fn inner(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` (which may draw from libtorch's global generator, e.g. to initialise a model) with
/// that generator seeded by `seed`, holding a process-wide lock so that other threads doing
/// the same cannot interleave: model initialisation is reproducible even with parallel runs.
pub fn with_global_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = GLOBAL_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    f()
}
