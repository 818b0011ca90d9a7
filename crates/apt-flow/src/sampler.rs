//! ODE samplers from `t = 1` (noise) to `t = 0` (data): Euler and Heun on a shifted time grid,
//! with classifier-free guidance `v = v_u + w·(v_c − v_u)` (the unconditional branch is the
//! null caption or a negative prompt). Deterministic: the caller passes the noise.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{config_error, Result};
use crate::flow::{Conditioning, VelocityModel};
use crate::timesteps::shift;

/// Integration rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// First order: one velocity per step.
    Euler,
    /// Second order (trapezoidal predictor-corrector): two velocities per step.
    Heun,
}

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    /// Steps from 1 to 0.
    pub steps: usize,
    /// Euler or Heun.
    pub method: Method,
    /// Shift of the time grid (1 = uniform).
    pub shift: f64,
    /// Guidance scale `w` (1 = no guidance: one evaluation per velocity).
    pub cfg_scale: f64,
}

impl SamplerConfig {
    /// The paper's baseline: 25 Euler steps with CFG 7.5 (50 network evaluations).
    pub fn paper_baseline() -> Self {
        Self {
            steps: 25,
            method: Method::Euler,
            shift: 1.0,
            cfg_scale: 7.5,
        }
    }

    /// Checks the values; `key` prefixes the field names in errors (e.g. `sampler`).
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.steps == 0 {
            return Err(config_error(&format!("{key}.steps"), "must be at least 1"));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(config_error(
                &format!("{key}.shift"),
                format!("must be a positive number, got {}", self.shift),
            ));
        }
        if !self.cfg_scale.is_finite() {
            return Err(config_error(
                &format!("{key}.cfg_scale"),
                format!("must be finite, got {}", self.cfg_scale),
            ));
        }
        Ok(())
    }

    /// Network evaluations per sample (a guided velocity costs two).
    pub fn network_evaluations(&self) -> usize {
        let per_velocity = if self.cfg_scale == 1.0 { 1 } else { 2 };
        let per_step = match self.method {
            Method::Euler => 1,
            Method::Heun => 2,
        };
        self.steps * per_step * per_velocity
    }
}

/// `[t_0 = 1, …, t_N = 0]`, `N = steps`: a uniform grid pushed through the shift,
/// `t_i = shift(1 − i/N, s)`.
pub fn time_grid(steps: usize, s: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| shift(1.0 - i as f64 / steps as f64, s))
        .collect()
}

/// What the velocity is conditioned on.
#[derive(Debug)]
pub struct Guidance<'a> {
    /// The caption's conditioning (`[B, …]` or `[1, …]`, broadcast).
    pub cond: &'a Conditioning,
    /// The null caption or a negative prompt (required when `scale != 1`).
    pub uncond: Option<&'a Conditioning>,
    /// Guidance scale `w`.
    pub scale: f64,
}

/// The (guided) velocity at `x` `[B, …]`, time `t` (one value for the batch):
/// `v = v_u + w·(v_c − v_u)`, or `v_c` alone when `w = 1`; shaped like `x`.
pub fn guided_velocity(
    model: &impl VelocityModel,
    x: &Tensor,
    t: f64,
    g: &Guidance,
) -> Result<Tensor> {
    let b = x.size()[0];
    let cond = g.cond.expand_to(b);
    let times = Tensor::full([b], t, (tch::Kind::Float, x.device()));
    let uncond = match (g.scale == 1.0, g.uncond) {
        (true, _) => return model.velocity(x, &times, &cond),
        (false, None) => {
            return Err(config_error(
                "cfg_scale",
                "guidance needs an unconditional (null or negative) caption",
            ))
        }
        (false, Some(u)) => u.expand_to(b),
    };
    // One batched evaluation when the token counts agree, else two.
    let (v_cond, v_uncond) = match Conditioning::cat(&cond, &uncond) {
        Some(both) => {
            let v = model.velocity(
                &Tensor::cat(&[x, x], 0),
                &Tensor::cat(&[&times, &times], 0),
                &both,
            )?;
            (v.narrow(0, 0, b), v.narrow(0, b, b))
        }
        None => (
            model.velocity(x, &times, &cond)?,
            model.velocity(x, &times, &uncond)?,
        ),
    };
    Ok(&v_uncond + (v_cond - &v_uncond) * g.scale)
}

/// Integrates from the noise `z` `[B, C, T, H, W]` at `t = 1` to `t = 0` on [`time_grid`],
/// without gradient, returning every state (`z` first; `steps + 1` tensors shaped like `z`).
/// With `h = t' − t < 0`, Euler: `x ← x + h·v(x, t)`; Heun:
/// `x ← x + h/2·(v(x, t) + v(x + h·v(x, t), t'))`, `v` the guided velocity.
pub fn sample_trajectory(
    model: &impl VelocityModel,
    z: &Tensor,
    g: &Guidance,
    cfg: &SamplerConfig,
) -> Result<Vec<Tensor>> {
    let mut states = vec![z.shallow_clone()];
    integrate(model, z, g, cfg, &mut |_, x| {
        states.push(x.shallow_clone());
        ControlFlow::Continue(())
    })?;
    Ok(states)
}

/// Integrates from `z` at `t = 1` to `t = 0` and returns the sample, shaped like `z` (see
/// [`sample_trajectory`]; only the current state is kept).
pub fn sample(
    model: &impl VelocityModel,
    z: &Tensor,
    g: &Guidance,
    cfg: &SamplerConfig,
) -> Result<Tensor> {
    Ok(integrate(model, z, g, cfg, &mut |_, _| ControlFlow::Continue(()))?.expect("never stopped"))
}

/// [`sample`] that calls `after_step(steps done, state)` after every step and stops when it
/// returns [`ControlFlow::Break`] (`Ok(None)`): a caller's progress bar and Ctrl-C.
pub fn sample_with(
    model: &impl VelocityModel,
    z: &Tensor,
    g: &Guidance,
    cfg: &SamplerConfig,
    after_step: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<Option<Tensor>> {
    integrate(model, z, g, cfg, &mut |done, _| after_step(done))
}

/// The integration loop of every sampler: `after_step(steps done, state)` after each step.
fn integrate(
    model: &impl VelocityModel,
    z: &Tensor,
    g: &Guidance,
    cfg: &SamplerConfig,
    after_step: &mut dyn FnMut(usize, &Tensor) -> ControlFlow<()>,
) -> Result<Option<Tensor>> {
    cfg.validate("sampler")?;
    let grid = time_grid(cfg.steps, cfg.shift);
    tch::no_grad(|| {
        let mut x = z.shallow_clone();
        for (i, w) in grid.windows(2).enumerate() {
            let (t, t_next) = (w[0], w[1]);
            let h = t_next - t; // negative: time runs backwards
            let v = guided_velocity(model, &x, t, g)?;
            x = match cfg.method {
                Method::Euler => &x + &v * h,
                Method::Heun => {
                    let predicted = &x + &v * h;
                    let v_next = guided_velocity(model, &predicted, t_next, g)?;
                    &x + (v + v_next) * (h / 2.0)
                }
            };
            if after_step(i + 1, &x).is_break() {
                return Ok(None);
            }
        }
        Ok(Some(x))
    })
}
