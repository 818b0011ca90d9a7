//! Distillation and the one-step generator on Gaussian data with the exact teacher, and the
//! trainer's accumulation and divergence handling on synthetic objectives.

use apt_flow::gaussian::GaussianFlow;
use apt_flow::train::checkpoint;
use apt_flow::train::{Optimizer, OptimizerConfig, Part, StepLog, TrainConfig, TrainStep, Trainer};
use apt_flow::{
    sample, Conditioning, Cursor, FlowError, Guidance, Method, OneStepGenerator, SamplerConfig,
    TensorRng, VelocityModel,
};
use tch::{nn, Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn no_text(b: i64) -> Conditioning {
    Conditioning {
        context: Tensor::zeros([b, 1, 1], (Kind::Float, CPU)),
        pooled: Tensor::zeros([b, 1], (Kind::Float, CPU)),
    }
}

/// A tiny student: `v(x, t) = a ⊙ x + b` per dimension (enough to express the one-step map).
struct Affine {
    a: Tensor,
    b: Tensor,
}

impl VelocityModel for Affine {
    fn velocity(&self, x: &Tensor, _t: &Tensor, _c: &Conditioning) -> apt_flow::Result<Tensor> {
        Ok(x * &self.a + &self.b)
    }
}

#[test]
fn one_step_of_the_exact_flow_gives_the_mean_and_distillation_fixes_it() {
    let field = GaussianFlow {
        mu: 1.0,
        sigma: 0.3,
    };
    // The exact field at t = 1 points at the mean: one Euler step collapses every sample to μ.
    let z = TensorRng::seeded_normal(5, &[256, 3], CPU);
    let blurry = OneStepGenerator::new(field)
        .generate(&z, &no_text(256))
        .unwrap();
    assert!((blurry - 1.0).abs().max().double_value(&[]) < 1e-6);

    // Teacher pairs from the exact ODE (Heun, 64 steps), then MSE distillation of the student.
    let g_text = no_text(256);
    let teacher = sample(
        &field,
        &z,
        &Guidance {
            cond: &g_text,
            uncond: None,
            scale: 1.0,
        },
        &SamplerConfig {
            steps: 64,
            method: Method::Heun,
            shift: 1.0,
            cfg_scale: 1.0,
        },
    )
    .unwrap()
    .to_kind(Kind::Float);
    let vs = nn::VarStore::new(CPU);
    let student = Affine {
        a: vs.root().zeros("a", &[3]),
        b: vs.root().zeros("b", &[3]),
    };
    let mut opt = Optimizer::new(OptimizerConfig::Adamw {
        lr: 0.05,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
    })
    .unwrap();
    let generator = OneStepGenerator::new(&student);
    let mut last = f64::MAX;
    for _ in 0..600 {
        apt_flow::train::zero_grad(&vs);
        let loss = (generator.generate(&z, &g_text).unwrap() - &teacher)
            .square()
            .mean(Kind::Float);
        loss.backward();
        opt.step(&vs, 0.05);
        last = loss.double_value(&[]);
    }
    // The one-step map of N(1, 0.3²) data is x = 1 + 0.3 z: a = 1 − σ, b = −μ.
    assert!(last < 1e-5, "loss {last}");
    assert!(
        (&student.a - 0.7).abs().max().double_value(&[]) < 5e-3,
        "{}",
        student.a
    );
    assert!(
        (&student.b + 1.0).abs().max().double_value(&[]) < 5e-3,
        "{}",
        student.b
    );
    let fresh = TensorRng::seeded_normal(9, &[10_000, 3], CPU);
    let x = generator.generate(&fresh, &no_text(10_000)).unwrap();
    assert!(
        (x.mean(Kind::Double).double_value(&[]) - 1.0).abs() < 0.01
            && (x.std(true).double_value(&[]) - 0.3).abs() < 0.01
    );
    // Two zero-shot steps are Euler on [1, 0.5, 0].
    let two = generator.generate_steps(&z, &g_text, 2).unwrap();
    let half = &z
        - student
            .velocity(&z, &Tensor::ones([256], (Kind::Float, CPU)), &g_text)
            .unwrap()
            * 0.5;
    let manual = &half
        - student
            .velocity(
                &half,
                &Tensor::full([256], 0.5, (Kind::Float, CPU)),
                &g_text,
            )
            .unwrap()
            * 0.5;
    assert!((two - manual).abs().max().double_value(&[]) < 1e-6);
}

/// `mean((w − target_i)²)` over a fixed list of targets, served in order; can turn NaN.
struct Quadratic<'a> {
    w: &'a Tensor,
    targets: Vec<f64>,
    batch: usize,
    cursor: Cursor,
    nan_from: Option<usize>,
}

impl TrainStep for Quadratic<'_> {
    fn loss(
        &mut self,
        _phase: usize,
        _rng: &mut TensorRng,
        log: &mut StepLog,
    ) -> apt_flow::Result<Tensor> {
        let start = self.cursor.position % self.targets.len();
        let t = Tensor::from_slice(&self.targets[start..start + self.batch]).to_kind(Kind::Float);
        self.cursor.position += self.batch;
        let loss = (self.w - t).square().mean(Kind::Float);
        log.add_tensor("loss", &loss);
        Ok(match self.nan_from {
            Some(n) if self.cursor.position > n => loss * f64::NAN,
            _ => loss,
        })
    }
    fn cursor(&self) -> Cursor {
        self.cursor
    }
    fn restore(&mut self, cursor: Cursor) -> apt_flow::Result<()> {
        self.cursor = cursor;
        Ok(())
    }
}

const RMSPROP: OptimizerConfig = OptimizerConfig::Rmsprop {
    lr: 0.01,
    alpha: 0.9,
    eps: 1e-8,
    weight_decay: 0.0,
    momentum: 0.0,
    centered: false,
};

fn trainer_config(batch: usize, accum: usize, steps: u64) -> TrainConfig {
    TrainConfig {
        grad_accum: accum,
        checkpoint_every: 2,
        keep_checkpoints: 5,
        max_nonfinite: 3,
        ..TrainConfig::new(steps, batch, RMSPROP)
    }
}

/// A trainer of the single weight `w` (a part called `model`).
fn quadratic_trainer(dir: &std::path::Path, config: &TrainConfig) -> (Trainer, Tensor) {
    let vs = nn::VarStore::new(CPU);
    let w = vs.root().zeros("w", &[1]);
    let part = Part::new("model", vs, RMSPROP, None).unwrap();
    let trainer = Trainer::new("quad", dir, config, vec![part], TensorRng::new(0, 0)).unwrap();
    (trainer, w)
}

#[test]
fn accumulating_two_half_batches_equals_one_full_batch() {
    let targets: Vec<f64> = (0..64).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut finals = vec![];
    for (batch, accum) in [(8, 1), (4, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut trainer, w) = quadratic_trainer(dir.path(), &trainer_config(batch, accum, 5));
        let mut objective = Quadratic {
            w: &w,
            targets: targets.clone(),
            batch,
            cursor: Cursor::default(),
            nan_from: None,
        };
        trainer.run(&mut objective, &mut |_: &_| {}).unwrap();
        finals.push(w.double_value(&[0]));
    }
    assert!((finals[0] - finals[1]).abs() < 1e-6, "{finals:?}");
}

#[test]
fn a_diverging_run_stops_with_the_last_good_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<f64> = (0..64).map(|i| i as f64 / 64.0).collect();
    let (mut trainer, w) = quadratic_trainer(dir.path(), &trainer_config(4, 1, 20));
    // Losses turn NaN after 4 updates (16 samples): updates 5, 6, 7 are skipped, then it stops.
    let mut objective = Quadratic {
        w: &w,
        targets,
        batch: 4,
        cursor: Cursor::default(),
        nan_from: Some(16),
    };
    let err = trainer.run(&mut objective, &mut |_: &_| {}).unwrap_err();
    assert!(
        matches!(err, FlowError::Diverged { count: 3, step: 7 }),
        "{err}"
    );
    assert_eq!(trainer.guard.skipped_total, 3);
    let (loaded, rejected) = checkpoint::load_latest(&trainer.checkpoint_dir())
        .unwrap()
        .unwrap();
    assert!(rejected.is_empty());
    assert_eq!(loaded.manifest.step, 6, "the step-6 checkpoint (weights of step 4; updates 5 and 6 were skipped) is the last written");
    let weights = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(weights.lines().count(), 6);
}

#[test]
fn resuming_with_another_optimizer_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<f64> = (0..64).map(|i| i as f64 / 64.0).collect();
    let config = trainer_config(4, 1, 2);
    let (mut trainer, w) = quadratic_trainer(dir.path(), &config);
    let mut objective = Quadratic {
        w: &w,
        targets: targets.clone(),
        batch: 4,
        cursor: Cursor::default(),
        nan_from: None,
    };
    trainer.run(&mut objective, &mut |_: &_| {}).unwrap();
    let vs = nn::VarStore::new(CPU);
    let w2 = vs.root().zeros("w", &[1]);
    let adamw = OptimizerConfig::Adamw {
        lr: 0.01,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let part = Part::new("model", vs, adamw, None).unwrap();
    let mut other = Trainer::new(
        "quad",
        dir.path(),
        &config,
        vec![part],
        TensorRng::new(0, 0),
    )
    .unwrap();
    let mut objective = Quadratic {
        w: &w2,
        targets,
        batch: 4,
        cursor: Cursor::default(),
        nan_from: None,
    };
    let err = other.resume(&mut objective).unwrap_err().to_string();
    assert!(err.contains("rmsprop") && err.contains("adamw"), "{err}");
}
