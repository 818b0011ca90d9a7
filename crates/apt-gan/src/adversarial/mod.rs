//! Stage 3, adversarial post-training (spec §5), as one step of `apt-flow`'s training loop:
//! G starts from the distilled one-step student, D from the diffusion (teacher) weights with
//! fresh heads ([`crate::discriminator`]); each update is a D phase — the non-saturating loss
//! `softplus(−D(x)) + softplus(D(G(z)))` plus λ·approximated R1 on the real clips — then a G
//! phase — `softplus(−D(G(z)))` with D frozen. The loop supplies gradient accumulation, the
//! non-finite guard, clipping, RMSProp, the generator EMA, checkpoints and resume.
//!
//! [`AdversarialConfig`] also offers documented departures, all off by default: the
//! relativistic or hinge loss, approximated R2 on fakes, several D steps per G step, and
//! translated or noised D inputs ([`inputs`]).
//!
//! Files: `config.rs` (the objective's settings and defaults), `inputs.rs` (what D sees),
//! `step.rs` (the step: its state, draws and the loop's trait), `phases.rs` (the D and G
//! phases, one function each for the plain and the recomputed pass).

pub mod config;
pub mod inputs;
mod phases;
pub mod step;

pub use config::{AdversarialConfig, AdversarialLoss};
pub use inputs::{DiscriminatorInputs, InputDraw};
pub use step::{AdversarialStep, DISCRIMINATOR, GENERATOR};
