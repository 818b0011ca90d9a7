//! The source article's conditional MLP WGAN-GP ([`gan`]) and the probabilistic scenario
//! generation it was built for ([`scenarios`]). Independent of APT; kept as the project's
//! origin and as a worked GAN example with a known conditional distribution.

pub mod gan;
pub mod scenarios;
