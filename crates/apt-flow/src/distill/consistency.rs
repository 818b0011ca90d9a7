//! Consistency distillation (the paper's initialisation for APT): the student is an
//! x0-predictor `f(x_t, t) = x_t − t·v(x_t, t)`; for `n ~ U{0, …, N−1}` on a shifted grid, the
//! target is the stop-gradient (or EMA) student at `t_n`, applied to one teacher CFG Euler
//! step from `x_{t_{n+1}}`; the loss is `‖f(x_{t_{n+1}}) − sg f(x_{t_n})‖²`.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::{to_training_device, CaptionEncoder, ClipSource, Cursor};
use crate::error::{config_error, Result};
use crate::flow::{
    backward_recomputed, interpolate, per_sample, predict_x0, Conditioning, VelocityModel,
};
use crate::rng::TensorRng;
use crate::sampler::time_grid;
use crate::train::{Part, Shard, StepLog, TrainStep};

/// Which network gives the consistency target at `t_n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyTarget {
    /// The current student without gradient.
    #[default]
    StopGradient,
    /// The EMA of the student (the trained part needs an EMA).
    Ema,
}

/// The method's settings. In a run config they sit directly under `[consistency]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// Discretisation points N (≥ 2; default 32, APT2's 32 fixed steps).
    #[serde(default = "default_points")]
    pub points: usize,
    /// Shift `s` of the discretisation grid (default 1 = uniform; APT2 shifts with 24).
    #[serde(default = "default_shift")]
    pub shift: f64,
    /// The teacher's constant CFG scale (required; the paper: 7.5).
    pub cfg_scale: f64,
    /// Target network (default: the student under stop-gradient).
    #[serde(default)]
    pub target: ConsistencyTarget,
}

fn default_points() -> usize {
    32
}

fn default_shift() -> f64 {
    1.0
}

impl ConsistencyConfig {
    /// Checks the values; `key` prefixes the field names in errors.
    pub fn validate(&self, key: &str) -> Result<()> {
        if self.points < 2 {
            return Err(config_error(
                &format!("{key}.points"),
                format!("must be at least 2, got {}", self.points),
            ));
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
}

/// One micro-batch of consistency distillation. Per sample, `n ~ U{0, …, N−1}` on the
/// ascending grid, `x_{n+1} = (1 − t_{n+1})·x0 + t_{n+1}·ε`, one teacher CFG Euler step
/// `x̂_n = x_{n+1} + (t_n − t_{n+1})·v_cfg(x_{n+1}, t_{n+1})`; loss
/// `mean ‖f(x_{n+1}, t_{n+1}) − f⁻(x̂_n, t_n)‖²` with `f(x, t) = x − t·v(x, t)` and `f⁻` the
/// student under stop-gradient (or its EMA). Clips `[B, C, T, H, W]`. Logs `loss`. Data parallel
/// ([`with_shard`](Self::with_shard)): the random draws are made for the whole global
/// micro-batch and each rank keeps its rows.
pub struct ConsistencyStep<'a, M> {
    student: &'a M,
    teacher: &'a M,
    target: Option<(&'a M, &'a nn::VarStore)>,
    data: &'a mut dyn ClipSource,
    text: &'a dyn CaptionEncoder,
    null: Conditioning,
    grid: Vec<f64>,
    cfg_scale: f64,
    batch: usize,
    shard: Shard,
    recompute: bool,
    device: Device,
}

impl<'a, M: VelocityModel> ConsistencyStep<'a, M> {
    /// The step for `student` (trained part 0) against `teacher`. With
    /// [`ConsistencyTarget::Ema`], `ema_target` is a separate model (and its store) that holds
    /// the student's EMA weights, refreshed after every update.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &ConsistencyConfig,
        student: &'a M,
        teacher: &'a M,
        ema_target: Option<(&'a M, &'a nn::VarStore)>,
        data: &'a mut dyn ClipSource,
        text: &'a dyn CaptionEncoder,
        batch: usize,
        device: Device,
    ) -> Result<Self> {
        let mut grid = time_grid(cfg.points, cfg.shift);
        grid.reverse(); // ascending: t_0 = 0 … t_N = 1
        Ok(Self {
            student,
            teacher,
            target: ema_target.filter(|_| cfg.target == ConsistencyTarget::Ema),
            data,
            null: text.null()?,
            text,
            grid,
            cfg_scale: cfg.cfg_scale,
            batch,
            shard: Shard::WHOLE,
            recompute: false,
            device,
        })
    }

    /// Recomputes the student's activations in the backward pass (see
    /// [`VelocityModel::backward_velocity_loss`]).
    pub fn with_recompute(mut self, recompute: bool) -> Self {
        self.recompute = recompute;
        self
    }

    /// Trains on `shard`'s rows of every global micro-batch of `batch` clips.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    fn sync(&self, parts: &[Part]) -> Result<()> {
        if let (Some((_, target_vs)), Some(ema)) = (self.target, parts[0].ema.as_ref()) {
            ema.copy_to(target_vs)?;
        }
        Ok(())
    }
}

impl<M: VelocityModel> ConsistencyStep<'_, M> {
    /// The next micro-batch: `x_{t_{n+1}}`, `t_{n+1}` `[B]`, the conditioning and the target
    /// `x̂0` of one teacher CFG Euler step to `t_n` (this rank's rows of global draws).
    fn draw(&mut self, rng: &mut TensorRng) -> Result<(Tensor, Tensor, Conditioning, Tensor)> {
        let (video, captions) = self.data.next_shard(self.batch, self.shard)?;
        let x0 = to_training_device(&video, self.device);
        let b = captions.len();
        let cond = self.text.encode(&captions, &[])?;
        // n uniform in {0, …, N-1}: the pair (t_{n+1}, t_n) on the ascending grid.
        let points = self.grid.len() - 1;
        let key = "batch_size";
        let n: Vec<usize> = (0..b * self.shard.world)
            .map(|_| ((rng.uniform_scalar() * points as f64) as usize).min(points - 1))
            .collect();
        let n = self.shard.items(&n, key)?;
        let at = |offset: usize| {
            let t: Vec<f32> = n.iter().map(|&i| self.grid[i + offset] as f32).collect();
            Tensor::from_slice(&t).to_device(self.device)
        };
        let (t_hi, t_lo) = (at(1), at(0));
        let mut global = x0.size();
        global[0] *= self.shard.world as i64;
        let eps = self.shard.rows(&rng.normal(&global, self.device), key)?;
        let x_hi = interpolate(&x0, &eps, &t_hi);
        let target = tch::no_grad(|| -> Result<Tensor> {
            // One teacher CFG Euler step t_{n+1} → t_n, per sample.
            let both =
                Conditioning::cat(&cond, &self.null.expand_to(b as i64)).expect("same token count");
            let v = self.teacher.velocity(
                &Tensor::cat(&[&x_hi, &x_hi], 0),
                &Tensor::cat(&[&t_hi, &t_hi], 0),
                &both,
            )?;
            let (vc, vu) = (v.narrow(0, 0, b as i64), v.narrow(0, b as i64, b as i64));
            let v_cfg = &vu + (vc - &vu) * self.cfg_scale;
            let x_lo = &x_hi + per_sample(&(&t_lo - &t_hi), &x_hi) * v_cfg;
            let net = self.target.map(|(m, _)| m).unwrap_or(self.student);
            Ok(predict_x0(
                &x_lo,
                &t_lo,
                &net.velocity(&x_lo, &t_lo, &cond)?,
            ))
        })?;
        Ok((x_hi, t_hi, cond, target))
    }
}

impl<M: VelocityModel> TrainStep for ConsistencyStep<'_, M> {
    fn prepare(&mut self, parts: &[Part]) -> Result<()> {
        // Every weight once (the frozen ones, e.g. a LoRA base, never change), then the EMA.
        if let Some((_, target_vs)) = self.target {
            parts[0].copy_weights_to(target_vs);
        }
        self.sync(parts)
    }

    fn loss(&mut self, _phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        let (x_hi, t_hi, cond, target) = self.draw(rng)?;
        let f = predict_x0(&x_hi, &t_hi, &self.student.velocity(&x_hi, &t_hi, &cond)?);
        let loss = (f - target).square().mean(Kind::Float);
        log.add_tensor("loss", &loss);
        Ok(loss)
    }

    fn recomputes(&self) -> bool {
        self.recompute
    }

    fn backward_recomputed(
        &mut self,
        _phase: usize,
        rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let (x_hi, t_hi, cond, target) = self.draw(rng)?;
        let value = backward_recomputed(self.student, &x_hi, &t_hi, &cond, accum, |v| {
            (predict_x0(&x_hi, &t_hi, v) - &target)
                .square()
                .mean(Kind::Float)
        })?;
        log.add_tensor("loss", &value);
        Ok(value)
    }
    fn after_update(&mut self, _phase: usize, parts: &[Part]) -> Result<()> {
        self.sync(parts)
    }

    fn cursor(&self) -> Cursor {
        self.data.cursor()
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.data.restore(cursor)
    }
}
