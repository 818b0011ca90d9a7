//! # apt-gan
//!
//! The adversarial half of APT: GAN losses as free functions over logits with their formulas
//! ([`losses`]: binary cross-entropy / minimax / non-saturating, hinge, WGAN with gradient
//! penalty, exact R1 by double backward, APT's approximated R1/R2, the relativistic pairing
//! loss), the APT discriminator ([`discriminator`]), and one adversarial update — D then G —
//! as a step of `apt-flow`'s training loop ([`adversarial`]). [`wgan_gp`] holds the source
//! article's conditional MLP WGAN-GP.

#![warn(missing_docs)]

pub mod adversarial;
pub mod discriminator;
pub mod losses;
pub mod wgan_gp;

pub use adversarial::{AdversarialConfig, AdversarialLoss, AdversarialStep, DiscriminatorInputs};
pub use discriminator::{AptDiscriminator, DiscriminatorConfig};
pub use losses::{
    approx_penalty_from_logits, approx_r1_penalty, approx_r2_penalty, bce_discriminator_loss,
    exact_r1_penalty, gradient_penalty, hinge_discriminator_loss, hinge_generator_loss,
    minimax_generator_loss, non_saturating_generator_loss, relativistic_discriminator_loss,
    relativistic_generator_loss, wgan_critic_loss, wgan_generator_loss, Interpolation,
};

/// The README's example, compiled as a doctest (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
