//! GAN losses as free functions over logits (or critic scores), each with its formula.
//!
//! Logits are the discriminator's raw outputs `l` (its probability is `σ(l)`); every
//! cross-entropy term is written with `softplus`, which is exact and finite for any logit:
//! `−log σ(l) = softplus(−l)` and `−log(1 − σ(l)) = softplus(l)`. Logits and scores are `[B]`
//! (any shape works: means run over every element); every loss and penalty is a scalar, in the
//! inputs' precision.

use tch::{Kind, Tensor};

/// Discriminator binary cross-entropy (the seed's `L_D = −E log D(x) − E log(1 − D(G(z)))`,
/// also APT's non-saturating D loss): `E softplus(−l_real) + E softplus(l_fake)`.
pub fn bce_discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    real_logits.neg().softplus().mean(real_logits.kind())
        + fake_logits.softplus().mean(fake_logits.kind())
}

/// The original minimax generator loss `E log(1 − D(G(z))) = −E softplus(l_fake)` (minimised;
/// its gradient vanishes when D confidently rejects the fakes).
pub fn minimax_generator_loss(fake_logits: &Tensor) -> Tensor {
    fake_logits.softplus().mean(fake_logits.kind()).neg()
}

/// The non-saturating generator loss `−E log D(G(z)) = E softplus(−l_fake)` (APT's `L_G`).
pub fn non_saturating_generator_loss(fake_logits: &Tensor) -> Tensor {
    fake_logits.neg().softplus().mean(fake_logits.kind())
}

/// Hinge discriminator loss `E max(0, 1 − l_real) + E max(0, 1 + l_fake)`.
pub fn hinge_discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    (real_logits.neg() + 1.0).relu().mean(real_logits.kind())
        + (fake_logits + 1.0).relu().mean(fake_logits.kind())
}

/// Hinge (and WGAN) generator loss `−E l_fake`.
pub fn hinge_generator_loss(fake_logits: &Tensor) -> Tensor {
    fake_logits.mean(fake_logits.kind()).neg()
}

/// WGAN critic loss `−(E D(x) − E D(G(z)))` (without the penalty).
pub fn wgan_critic_loss(real_scores: &Tensor, fake_scores: &Tensor) -> Tensor {
    (real_scores.mean(real_scores.kind()) - fake_scores.mean(fake_scores.kind())).neg()
}

/// WGAN generator loss `−E D(G(z))`.
pub fn wgan_generator_loss(fake_scores: &Tensor) -> Tensor {
    fake_scores.mean(fake_scores.kind()).neg()
}

/// Relativistic pairing discriminator loss (R3GAN, used by APT2):
/// `E softplus(l_fake − l_real)` over paired samples.
pub fn relativistic_discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    (fake_logits - real_logits)
        .softplus()
        .mean(fake_logits.kind())
}

/// Relativistic pairing generator loss `E softplus(l_real − l_fake)`.
pub fn relativistic_generator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    (real_logits - fake_logits)
        .softplus()
        .mean(fake_logits.kind())
}

/// How the gradient-penalty interpolation weight `ε` is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interpolation {
    /// One `ε ~ U(0, 1)` per sample (WGAN-GP as published; the default).
    #[default]
    PerSample,
    /// One `ε` per element (`bs × sample_size`), as the source article's code does.
    PerElement,
}

/// `ε` for [`gradient_penalty`]: `[B, 1, …]` per sample or the full shape per element, from
/// libtorch's generator (pass your own `eps` to control it).
pub fn interpolation_weights(like: &Tensor, how: Interpolation) -> Tensor {
    match how {
        Interpolation::PerSample => {
            let mut shape = vec![like.size()[0]];
            shape.extend(std::iter::repeat_n(1, like.dim() - 1));
            Tensor::rand(shape.as_slice(), (Kind::Float, like.device()))
        }
        Interpolation::PerElement => like.rand_like(),
    }
}

/// Per-sample squared gradient norms `‖∂ Σ score / ∂x_i‖²` (with a graph, so penalties built
/// on them can be backpropagated: a double backward).
fn gradient_norms_squared(score: &Tensor, x: &Tensor) -> Tensor {
    let grad = Tensor::run_backward(&[score.sum(score.kind())], &[x], true, true)
        .pop()
        .expect("one input");
    grad.reshape([grad.size()[0], -1])
        .square()
        .sum_dim_intlist(1, false, grad.kind())
}

/// WGAN-GP penalty `E (‖∇D(x̃)‖₂ − 1)²` at `x̃ = ε·x_real + (1 − ε)·x_fake`, one gradient norm
/// per sample: `real`, `fake` `[B, …]`, `critic` maps `[B, …]` to scores `[B]` or `[B, 1]`, `eps`
/// broadcast against the samples (`[B, 1, …]` per sample or full-shape per element).
pub fn gradient_penalty(
    critic: impl Fn(&Tensor) -> Tensor,
    real: &Tensor,
    fake: &Tensor,
    eps: &Tensor,
) -> Tensor {
    let mixed = (real * eps + fake * (eps.neg() + 1.0))
        .detach()
        .set_requires_grad(true);
    let norms = gradient_norms_squared(&critic(&mixed), &mixed).sqrt();
    (norms - 1.0).square().mean(real.kind())
}

/// Exact R1: `γ/2 · E ‖∇ₓ D(x)‖²` on real data `[B, …]`, `d` mapping it to logits `[B]`. Needs a
/// double backward through D (use the MMDiT's math attention path).
pub fn exact_r1_penalty(d: impl Fn(&Tensor) -> Tensor, real: &Tensor, gamma: f64) -> Tensor {
    let x = real.detach().set_requires_grad(true);
    gradient_norms_squared(&d(&x), &x).mean(x.kind()) * (gamma / 2.0)
}

/// APT's approximated R1: `λ · E ‖D(x) − D(x + σ·ε)‖²` on real data, added to the D loss.
/// `σ` is a **standard deviation**: the perturbation is `σ·ε` with `ε ~ N(0, I)` given as
/// `noise` (shaped like `real`). `d` must see the same timestep and text in both calls (close
/// over them) and receive exactly the tensor it consumes; gradients flow through both branches.
/// For small σ, `E (D(x) − D(x + σε))² ≈ σ²‖∇D(x)‖²`: it acts like R1 with `γ/2 = λσ²`.
pub fn approx_r1_penalty(
    d: impl Fn(&Tensor) -> Tensor,
    real: &Tensor,
    lambda: f64,
    sigma: f64,
    noise: &Tensor,
) -> Tensor {
    approx_penalty_from_logits(&d(real), &d(&(real + noise * sigma)), lambda)
}

/// The approximated R1/R2 from logits already computed, `λ · E (l_clean − l_perturbed)²`: lets
/// the D step reuse the loss's `D(x)` as the clean branch instead of a second forward.
pub fn approx_penalty_from_logits(clean: &Tensor, perturbed: &Tensor, lambda: f64) -> Tensor {
    let gap = clean - perturbed;
    gap.square().mean(gap.kind()) * lambda
}

/// Approximated R2: [`approx_r1_penalty`] on generated samples (APT2 uses both).
pub fn approx_r2_penalty(
    d: impl Fn(&Tensor) -> Tensor,
    fake: &Tensor,
    lambda: f64,
    sigma: f64,
    noise: &Tensor,
) -> Tensor {
    approx_r1_penalty(d, fake, lambda, sigma, noise)
}
