//! What the training tests share: the crate's fixtures ([`apt_flow::testing`]) at the sizes
//! these tests use — a 3-block model with every weight perturbed, eight clips with three
//! captions.

pub use apt_flow::testing::{FixedClips, HashedCaptions};
use apt_mmdit::Mmdit;
use tch::{nn, Device};

pub const CPU: Device = Device::Cpu;

/// Eight fixed clips with three captions.
pub fn clips() -> FixedClips {
    FixedClips::new(8, 3)
}

/// The 3-block test model predicting `prediction`, from `seed`, every weight perturbed.
pub fn model(prediction: &str, seed: i64) -> (nn::VarStore, Mmdit) {
    apt_flow::testing::perturbed_model(
        &apt_flow::testing::tiny_model_config(3, prediction),
        seed as u64,
    )
}
