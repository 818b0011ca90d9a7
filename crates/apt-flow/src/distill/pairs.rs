//! Deterministic distillation: `MSE(z − Ĝ(z, c, 1), x_teacher)` over teacher ODE pairs
//! `(z, c) → x_teacher`, served in a seeded per-epoch shuffle.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use crate::data::Cursor;
use crate::error::Result;
use crate::flow::{backward_recomputed, Conditioning, VelocityModel};
use crate::onestep::OneStepGenerator;
use crate::rng::TensorRng;
use crate::sampler::{sample, Guidance, SamplerConfig};
use crate::train::{Shard, StepLog, TrainStep};

/// Teacher pairs in memory.
#[derive(Debug)]
pub struct Pairs {
    /// Noise `[P, C, T, H, W]`.
    pub z: Tensor,
    /// Teacher samples, same shape.
    pub x: Tensor,
    /// Conditioning `[P, L, D]`, `[P, D]`.
    pub cond: Conditioning,
}

impl Pairs {
    /// The teacher's samples for noise `z` `[P, C, T, H, W]` and conditioning `cond` (batch `P`
    /// or 1): its sampler with CFG against `null` at the sampler's scale.
    pub fn generate(
        teacher: &impl VelocityModel,
        z: Tensor,
        cond: Conditioning,
        null: &Conditioning,
        sampler: &SamplerConfig,
    ) -> Result<Self> {
        let g = Guidance {
            cond: &cond,
            uncond: Some(null),
            scale: sampler.cfg_scale,
        };
        let x = sample(teacher, &z, &g, sampler)?;
        Ok(Self { z, x, cond })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.z.size()[0] as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All pairs of `parts` in order, on `device`.
    pub fn cat(parts: &[Pairs], device: tch::Device) -> Self {
        let all = |f: fn(&Pairs) -> &Tensor| {
            Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0).to_device(device)
        };
        Self {
            z: all(|p| &p.z),
            x: all(|p| &p.x),
            cond: Conditioning {
                context: all(|p| &p.cond.context),
                pooled: all(|p| &p.cond.pooled),
            },
        }
    }
}

/// `MSE(z − Ĝ(z, c, 1), x_teacher)` over pairs in a seeded shuffle per epoch. Logs `loss`.
/// Data parallel ([`with_shard`](Self::with_shard)): each rank trains on its rows of every
/// global micro-batch of `batch` pairs.
pub struct PairDistillStep<'a, M> {
    student: &'a M,
    pairs: &'a Pairs,
    batch: usize,
    shard: Shard,
    recompute: bool,
    seed: u64,
    cursor: Cursor,
    order: Vec<i64>,
}

impl<'a, M: VelocityModel> PairDistillStep<'a, M> {
    /// The student `student` on `pairs`, `batch` pairs per micro-batch, shuffled by `seed`.
    pub fn new(student: &'a M, pairs: &'a Pairs, batch: usize, seed: u64) -> Self {
        let mut step = Self {
            student,
            pairs,
            batch,
            shard: Shard::WHOLE,
            recompute: false,
            seed,
            cursor: Cursor::default(),
            order: vec![],
        };
        step.order = step.order(0);
        step
    }

    /// Trains on `shard`'s rows of every global micro-batch.
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    fn order(&self, epoch: u64) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.pairs.z.size()[0]).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ 0x0d15_7111);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
        order
    }
}

impl<M: VelocityModel> PairDistillStep<'_, M> {
    /// Recomputes the student's activations in the backward pass (see
    /// [`VelocityModel::backward_velocity_loss`]).
    pub fn with_recompute(mut self, recompute: bool) -> Self {
        self.recompute = recompute;
        self
    }

    /// The next micro-batch's `(z, conditioning, x_teacher)` (this rank's rows).
    fn next_pairs(&mut self) -> Result<(Tensor, Conditioning, Tensor)> {
        if self.cursor.position + self.batch > self.order.len() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                position: 0,
            };
            self.order = self.order(self.cursor.epoch);
        }
        let global = &self.order[self.cursor.position..self.cursor.position + self.batch];
        let idx = Tensor::from_slice(&self.shard.items(global, "batch_size")?)
            .to_device(self.pairs.z.device());
        self.cursor.position += self.batch;
        let z = self.pairs.z.index_select(0, &idx);
        let cond = Conditioning {
            context: self.pairs.cond.context.index_select(0, &idx),
            pooled: self.pairs.cond.pooled.index_select(0, &idx),
        };
        Ok((z, cond, self.pairs.x.index_select(0, &idx)))
    }
}

impl<M: VelocityModel> TrainStep for PairDistillStep<'_, M> {
    fn loss(&mut self, _phase: usize, _rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        let (z, cond, x_teacher) = self.next_pairs()?;
        let x = OneStepGenerator::new(self.student).generate(&z, &cond)?;
        let loss = (x - x_teacher).square().mean(Kind::Float);
        log.add_tensor("loss", &loss);
        Ok(loss)
    }

    fn recomputes(&self) -> bool {
        self.recompute
    }

    fn backward_recomputed(
        &mut self,
        _phase: usize,
        _rng: &mut TensorRng,
        log: &mut StepLog,
        accum: usize,
    ) -> Result<Tensor> {
        let (z, cond, x_teacher) = self.next_pairs()?;
        // x = z − Ĝ(z, c, 1), as OneStepGenerator::generate.
        let t = Tensor::ones([z.size()[0]], (Kind::Float, z.device()));
        let value = backward_recomputed(self.student, &z, &t, &cond, accum, |v| {
            ((&z - v) - &x_teacher).square().mean(Kind::Float)
        })?;
        log.add_tensor("loss", &value);
        Ok(value)
    }

    fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.order = self.order(cursor.epoch);
        self.cursor = cursor;
        Ok(())
    }
}
