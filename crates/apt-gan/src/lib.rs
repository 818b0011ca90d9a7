//! # apt-gan
//!
//! GAN losses for adversarial post-training, as free functions over logits with their formulas:
//! binary cross-entropy / minimax / non-saturating, hinge, WGAN with gradient penalty, exact R1
//! (double backward) and APT's approximated R1/R2, and the relativistic pairing loss.

#![warn(missing_docs)]

pub mod adversarial;
pub mod discriminator;
pub mod losses;
pub mod scenarios;
pub mod seed_gan;

pub use losses::{
    approx_r1_penalty, approx_r2_penalty, bce_discriminator_loss, exact_r1_penalty,
    gradient_penalty, hinge_discriminator_loss, hinge_generator_loss, minimax_generator_loss,
    non_saturating_generator_loss, relativistic_discriminator_loss, relativistic_generator_loss,
    wgan_critic_loss, wgan_generator_loss, Interpolation,
};
