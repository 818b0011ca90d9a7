//! Mixed precision in the loop: a bf16 part trains with fp32 master weights, gradients,
//! optimizer state and EMA; its update is close to the fp32 one (the tolerance below), its
//! model weights are the master rounded to bf16, and a run resumed from a bf16 checkpoint ends
//! at exactly the weights of an uninterrupted one. Also: the flat (multi-tensor) loop path makes
//! the same update as the per-variable optimizer, and a non-finite update is a no-op.

use apt_flow::data::{CaptionEncoder, Cursor};
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::train::{
    MetricLine, Optimizer, OptimizerConfig, Part, Precision, Shard, StepLog, TrainConfig,
    TrainStep, Trainer,
};
use apt_flow::{Result, TensorRng};
use apt_mmdit::Mmdit;
use tch::{Kind, Tensor};

mod common;

use common::*;

const ADAMW: OptimizerConfig = OptimizerConfig::Adamw {
    lr: 1e-3,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weight_decay: 0.01,
};

fn run(precision: Precision, steps: u64, dir: &std::path::Path, ema: bool) -> Trainer {
    let (vs, m) = model("velocity", 11);
    let config = TrainConfig {
        grad_accum: 2,
        clip_grad: Some(1.0),
        checkpoint_every: 2,
        ..TrainConfig::new(steps, 4, ADAMW)
    };
    let part = Part::new("model", vs, ADAMW, ema.then_some(0.9))
        .unwrap()
        .with_precision(precision);
    let mut trainer =
        Trainer::new("pretrain", dir, &config, vec![part], TensorRng::new(1, 0)).unwrap();
    let mut data = clips();
    let mut step = FlowMatchingStep {
        model: &m,
        data: &mut data,
        text: &HashedCaptions,
        batch: 4,
        shard: Shard::WHOLE,
        recompute: false,
        config: FlowMatchingConfig {
            p_uncond: 0.25,
            ..FlowMatchingConfig::default()
        },
        device: CPU,
    };
    trainer.resume(&mut step).unwrap();
    trainer.run(&mut step, &mut |_: &MetricLine| {}).unwrap();
    trainer
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

/// Tolerance of one bf16 update against fp32 (AdamW, lr 1e-3, 2 micro-batches, clipped):
/// bf16 keeps 8 bits of mantissa, so gradients differ by ~1% of their norm; AdamW's first
/// steps move each weight by about lr·sign(g), so a weight whose gradient is near zero may move
/// the other way. We bound the relative L2 distance of the weight change over 2 updates.
const BF16_UPDATE_TOLERANCE: f64 = 0.2; // measured: 0.09

#[test]
fn a_bf16_update_stays_close_to_fp32_with_fp32_master_state() {
    let start = {
        let (vs, _m) = model("velocity", 11);
        Part::new("model", vs, ADAMW, None)
            .unwrap()
            .flat
            .master()
            .copy()
    };
    let (d32, d16) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fp32 = run(Precision::Fp32, 2, d32.path(), true);
    let bf16 = run(Precision::Bf16, 2, d16.path(), true);
    let (p32, p16) = (&fp32.parts[0], &bf16.parts[0]);
    // What is kept in fp32, and what the model computes with.
    assert_eq!(p16.flat.master().kind(), Kind::Float);
    assert_eq!(p16.flat.grad().kind(), Kind::Float);
    for (name, v) in p16.vs.variables() {
        assert_eq!(v.kind(), Kind::BFloat16, "{name}");
        let master = p16.flat.master_of(&name).unwrap();
        assert!(
            v.equal(&master.to_kind(Kind::BFloat16)),
            "{name}: not the master rounded"
        );
    }
    for (name, t) in p16.optimizer.state_tensors("opt") {
        assert_eq!(t.kind(), Kind::Float, "{name}");
    }
    for (name, t) in p16.ema.as_ref().unwrap().state_tensors("ema") {
        assert_eq!(t.kind(), Kind::Float, "{name}");
    }
    // The update.
    let step32 = p32.flat.master() - &start;
    let step16 = p16.flat.master() - &start;
    let relative = (&step16 - &step32).norm().double_value(&[]) / step32.norm().double_value(&[]);
    eprintln!("bf16 vs fp32: relative distance of the 2-update weight change {relative:.4}");
    assert!(relative < BF16_UPDATE_TOLERANCE, "{relative}");
    assert!(relative > 0.0, "bf16 computed exactly like fp32?");
    // Losses logged by both runs agree to bf16 accuracy.
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        apt_flow::train::MetricsLog::read(&dir.join("metrics.jsonl"))
            .iter()
            .map(|l| l.value("loss"))
            .collect()
    };
    for (a, b) in losses(d32.path()).iter().zip(losses(d16.path())) {
        assert!((a - b).abs() / a.abs() < 0.02, "loss fp32 {a} vs bf16 {b}");
    }
}

#[test]
fn a_bf16_run_resumed_from_its_checkpoint_ends_exactly_where_a_straight_run_does() {
    let straight = tempfile::tempdir().unwrap();
    let all = run(Precision::Bf16, 4, straight.path(), true);
    let resumed = tempfile::tempdir().unwrap();
    let first = run(Precision::Bf16, 2, resumed.path(), true);
    drop(first);
    let second = run(Precision::Bf16, 4, resumed.path(), true);
    assert_eq!(second.step, 4);
    let (a, b) = (&all.parts[0], &second.parts[0]);
    assert!(
        a.flat.master().equal(b.flat.master()),
        "master weights differ"
    );
    let ema = |p: &Part| p.ema.as_ref().unwrap().state_tensors("e");
    for ((name, x), (_, y)) in ema(a).iter().zip(ema(b)) {
        assert!(x.equal(&y), "EMA {name} differs");
    }
    for ((name, x), (_, y)) in a
        .optimizer
        .state_tensors("o")
        .iter()
        .zip(b.optimizer.state_tensors("o"))
    {
        assert!(x.equal(&y), "optimizer state {name} differs");
    }
    assert_eq!(a.optimizer.steps_taken(), 4);
}

/// The flat path the loop takes equals the per-variable optimizer over the same gradients.
#[test]
fn the_flat_update_equals_the_per_variable_update() {
    for config in [
        ADAMW,
        OptimizerConfig::Rmsprop {
            lr: 1e-2,
            alpha: 0.9,
            eps: 1e-8,
            weight_decay: 0.1,
            momentum: 0.5,
            centered: true,
        },
    ] {
        let (vs_a, m_a) = model("velocity", 3);
        let (vs_b, _m_b) = model("velocity", 3);
        let part = Part::new("model", vs_a, config, None).unwrap();
        let mut per_variable = Optimizer::new(config).unwrap();
        let x = TensorRng::new(2, 0).normal(&[2, 3, 2, 16, 16], CPU);
        let cond = HashedCaptions
            .encode(&["a".into(), "b".into()], &[false, false])
            .unwrap();
        let t = Tensor::from_slice(&[0.3f32, 0.8]);
        let mut part = part;
        for k in 0..3 {
            let ok = Tensor::ones([], (Kind::Double, CPU));
            part.flat.zero_grad();
            let loss = m_a
                .forward(&(&x * (k + 1) as f64), &t, &cond.context, &cond.pooled)
                .unwrap()
                .square()
                .mean(Kind::Float);
            loss.backward();
            part.flat.collect_grads();
            // The same gradients into the other store: ⟨v, g⟩ has gradient g.
            apt_flow::train::zero_grad(&vs_b);
            let vars_a = part.vs.variables();
            let l: Tensor = vs_b
                .variables()
                .iter()
                .map(|(n, v)| (v * vars_a[n].grad().detach()).sum(Kind::Float))
                .fold(Tensor::zeros([], (Kind::Float, CPU)), |a, b| a + b);
            l.backward();
            part.optimizer.step_flat(&part.flat, 1e-2, &ok);
            per_variable.step(&vs_b, 1e-2);
        }
        let a = part.vs.variables();
        let worst = vs_b
            .variables()
            .iter()
            .map(|(n, v)| max_diff(v, &a[n]))
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "{config:?}: {worst:e}");
    }
}

/// A non-finite loss turns the update into a no-op on the device: weights, optimizer state and
/// EMA unchanged, the step counted as skipped.
#[test]
fn a_non_finite_update_changes_nothing() {
    struct Poisoned<'a> {
        inner: FlowMatchingStep<'a, Mmdit>,
        poison_at: usize,
        calls: usize,
    }
    impl TrainStep for Poisoned<'_> {
        fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
            self.calls += 1;
            let loss = self.inner.loss(phase, rng, log)?;
            Ok(if self.calls == self.poison_at {
                loss * f64::NAN
            } else {
                loss
            })
        }
        fn cursor(&self) -> Cursor {
            self.inner.cursor()
        }
        fn restore(&mut self, cursor: Cursor) -> Result<()> {
            self.inner.restore(cursor)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (vs, m) = model("velocity", 5);
    let config = TrainConfig {
        log_every: 3,
        ..TrainConfig::new(3, 4, ADAMW)
    };
    let part = Part::new("model", vs, ADAMW, Some(0.9)).unwrap();
    let mut trainer = Trainer::new(
        "pretrain",
        dir.path(),
        &config,
        vec![part],
        TensorRng::new(1, 0),
    )
    .unwrap();
    let mut data = clips();
    let mut snapshots = Vec::new();
    let mut step = Poisoned {
        inner: FlowMatchingStep {
            model: &m,
            data: &mut data,
            text: &HashedCaptions,
            batch: 4,
            shard: Shard::WHOLE,
            recompute: false,
            config: FlowMatchingConfig {
                p_uncond: 0.0,
                ..FlowMatchingConfig::default()
            },
            device: CPU,
        },
        poison_at: 2,
        calls: 0,
    };
    // Update 1 runs; update 2 is poisoned; compare the state after 1 with the state after 2.
    for steps in [1, 2, 3] {
        trainer.config.steps = steps;
        trainer.run(&mut step, &mut |_: &MetricLine| {}).unwrap();
        let p = &trainer.parts[0];
        snapshots.push((
            p.flat.master().copy(),
            p.ema
                .as_ref()
                .unwrap()
                .state_tensors("e")
                .iter()
                .map(|(_, t)| t.copy())
                .collect::<Vec<_>>(),
            p.optimizer.steps_taken(),
        ));
    }
    assert!(
        snapshots[0].0.equal(&snapshots[1].0),
        "a poisoned update moved the weights"
    );
    for (a, b) in snapshots[0].1.iter().zip(&snapshots[1].1) {
        assert!(a.equal(b), "a poisoned update moved the EMA");
    }
    assert_eq!((snapshots[0].2, snapshots[1].2, snapshots[2].2), (1, 1, 2));
    assert!(
        !snapshots[1].0.equal(&snapshots[2].0),
        "the next update did not run"
    );
    assert_eq!(trainer.guard.skipped_total, 1);
    let lines = apt_flow::train::MetricsLog::read(&dir.path().join("metrics.jsonl"));
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1].skipped, 1);
    assert!(
        lines[1].values["grad_norm"].is_none(),
        "a skipped update logs no gradient norm"
    );
}
