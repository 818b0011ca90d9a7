//! One adversarial update through apt-flow's training loop on a tiny model and a fixed set of
//! clips: the D phase changes only D, the G phase only G, every value is logged, and a
//! checkpointed run resumes to the same weights.

use std::collections::BTreeMap;

use apt_flow::data::Cursor;
use apt_flow::testing::{tiny_model_config, FixedClips, HashedCaptions};
use apt_flow::train::{Optimizer, OptimizerConfig, Part, StepLog, TrainConfig, TrainStep, Trainer};
use apt_flow::{Result, TensorRng};
use apt_gan::adversarial::{AdversarialStep, DISCRIMINATOR, GENERATOR};
use apt_gan::{AdversarialConfig, AdversarialLoss, AptDiscriminator, DiscriminatorConfig};
use apt_mmdit::{Mmdit, MmditConfig};
use tch::{nn, Device, Tensor};

const CPU: Device = Device::Cpu;

/// The 2-block test model.
fn model_config() -> MmditConfig {
    tiny_model_config(2, "velocity")
}

/// Eight fixed clips `[3, 2, 16, 16]` with two captions.
fn clips() -> FixedClips {
    FixedClips::new(8, 2)
}

fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect()
}

fn changed(before: &BTreeMap<String, Tensor>, vs: &nn::VarStore) -> usize {
    let now = vs.variables();
    before.iter().filter(|(k, t)| !t.equal(&now[*k])).count()
}

/// Records which parts each phase's update changed.
struct Probe<'a> {
    inner: AdversarialStep<'a, Mmdit>,
    before: Vec<BTreeMap<String, Tensor>>,
    changes: Vec<(usize, usize, usize)>,
}

impl TrainStep for Probe<'_> {
    fn phases(&self) -> Vec<usize> {
        self.inner.phases()
    }
    fn prepare(&mut self, parts: &[Part]) -> Result<()> {
        self.before = parts.iter().map(|p| snapshot(&p.vs)).collect();
        Ok(())
    }
    fn loss(&mut self, phase: usize, rng: &mut TensorRng, log: &mut StepLog) -> Result<Tensor> {
        self.inner.loss(phase, rng, log)
    }
    fn after_update(&mut self, phase: usize, parts: &[Part]) -> Result<()> {
        let g = changed(&self.before[GENERATOR], &parts[GENERATOR].vs);
        let d = changed(&self.before[DISCRIMINATOR], &parts[DISCRIMINATOR].vs);
        self.changes.push((phase, g, d));
        self.before = parts.iter().map(|p| snapshot(&p.vs)).collect();
        Ok(())
    }
    fn cursor(&self) -> Cursor {
        self.inner.cursor()
    }
    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.inner.restore(cursor)
    }
}

const RMSPROP: OptimizerConfig = OptimizerConfig::Rmsprop {
    lr: 1e-3,
    alpha: 0.9,
    eps: 1e-8,
    weight_decay: 0.0,
    momentum: 0.0,
    centered: false,
};

struct Models {
    generator: Mmdit,
    discriminator: AptDiscriminator,
    parts: Vec<Part>,
}

fn models() -> Models {
    let cfg = model_config();
    let vs_g = nn::VarStore::new(CPU);
    let generator = apt_flow::rng::with_global_seed(1, || Mmdit::new(vs_g.root(), &cfg)).unwrap();
    let vs_d = nn::VarStore::new(CPU);
    let discriminator = apt_flow::rng::with_global_seed(2, || {
        AptDiscriminator::new(
            vs_d.root(),
            &cfg.clone().into(),
            &DiscriminatorConfig::default(),
        )
    })
    .unwrap();
    let parts = vec![
        Part::new("generator", vs_g, RMSPROP, Some(0.9)).unwrap(),
        Part::new("discriminator", vs_d, RMSPROP, None).unwrap(),
    ];
    Models {
        generator,
        discriminator,
        parts,
    }
}

fn train_config(steps: u64) -> TrainConfig {
    TrainConfig {
        grad_accum: 2,
        optimizer_d: Some(RMSPROP),
        checkpoint_every: 1,
        ..TrainConfig::new(steps, 2, RMSPROP)
    }
}

/// Two updates of `config` through the loop: which parts each phase changed, and the metric
/// lines.
fn probe_run(
    config: AdversarialConfig,
) -> (Vec<(usize, usize, usize)>, Vec<apt_flow::train::MetricLine>) {
    let dir = tempfile::tempdir().unwrap();
    let m = models();
    let mut trainer = Trainer::new(
        "apt",
        dir.path(),
        &train_config(2),
        m.parts,
        TensorRng::new(0, 3),
    )
    .unwrap();
    let mut data = clips();
    let mut probe = Probe {
        inner: AdversarialStep::new(
            &m.generator,
            &m.discriminator,
            config,
            &mut data,
            &HashedCaptions,
            2,
            CPU,
        ),
        before: vec![],
        changes: vec![],
    };
    let mut lines = Vec::new();
    trainer
        .run(&mut probe, &mut |l: &apt_flow::train::MetricLine| {
            lines.push(l.clone())
        })
        .unwrap();
    (probe.changes, lines)
}

fn assert_phases_touch_their_part(changes: &[(usize, usize, usize)], d_steps: usize) {
    assert_eq!(changes.len(), 2 * (d_steps + 1), "two updates: {changes:?}");
    for (phase, g, d) in changes {
        if *phase < d_steps {
            assert!(
                *g == 0 && *d > 0,
                "a D phase changed G ({g}) or not D ({d})"
            );
        } else {
            assert!(
                *d == 0 && *g > 0,
                "a G phase changed D ({d}) or not G ({g})"
            );
        }
    }
}

#[test]
fn the_d_phase_changes_only_d_and_the_g_phase_only_g() {
    let (changes, lines) = probe_run(AdversarialConfig::default());
    assert_phases_touch_their_part(&changes, 1);
    for key in [
        "d_real",
        "d_fake",
        "d_loss",
        "ar1",
        "g_loss",
        "lr_generator",
        "lr_discriminator",
        "grad_norm_generator",
        "grad_norm_discriminator",
    ] {
        assert!(lines[1].value(key).is_finite(), "{key}: {lines:?}");
    }
    assert!(lines[1].value("ar1") >= 0.0);
}

#[test]
fn every_discriminator_option_trains_each_part_in_its_phase() {
    for loss in [
        AdversarialLoss::NonSaturating,
        AdversarialLoss::Relativistic,
        AdversarialLoss::Hinge,
    ] {
        let config = AdversarialConfig {
            loss,
            lambda_r2: 10.0,
            sigma_r2: Some(0.05),
            d_steps: 2,
            translate: 3,
            noised_inputs: true,
            ..AdversarialConfig::default()
        };
        let (changes, lines) = probe_run(config);
        assert_phases_touch_their_part(&changes, 2);
        for key in ["d_loss", "ar1", "ar2", "g_loss"] {
            let v = lines[1].value(key);
            assert!(v.is_finite(), "{loss:?} {key}: {lines:?}");
        }
        assert!(lines[1].value("ar2") > 0.0, "{loss:?}: R2 on fakes is on");
    }
}

#[test]
fn the_default_options_follow_the_papers_stream() {
    // Turning an option on changes the run; the defaults written out explicitly do not.
    let explicit = AdversarialConfig {
        lambda_r2: 0.0,
        d_steps: 1,
        loss: AdversarialLoss::NonSaturating,
        translate: 0,
        noised_inputs: false,
        ..AdversarialConfig::default()
    };
    let (_, a) = probe_run(AdversarialConfig::default());
    let (_, b) = probe_run(explicit);
    let (_, c) = probe_run(AdversarialConfig {
        translate: 3,
        noised_inputs: false,
        ..AdversarialConfig::default()
    });
    assert_eq!(a[1].value("g_loss"), b[1].value("g_loss"));
    assert_ne!(a[1].value("d_loss"), c[1].value("d_loss"));
}

#[test]
fn a_stopped_adversarial_run_resumes_to_the_same_weights() {
    let run = |dir: &std::path::Path, steps: u64, resume: bool| {
        let m = models();
        let mut trainer = Trainer::new(
            "apt",
            dir,
            &train_config(steps),
            m.parts,
            TensorRng::new(0, 3),
        )
        .unwrap();
        let mut data = clips();
        let mut step = AdversarialStep::new(
            &m.generator,
            &m.discriminator,
            AdversarialConfig::default(),
            &mut data,
            &HashedCaptions,
            2,
            CPU,
        );
        if resume {
            assert!(trainer.resume(&mut step).unwrap());
        }
        trainer.run(&mut step, &mut |_: &_| {}).unwrap();
        let ema = nn::VarStore::new(CPU);
        let _g = Mmdit::new(ema.root(), &model_config()).unwrap();
        trainer.parts[GENERATOR].copy_exported_to(&ema).unwrap();
        (snapshot(&ema), snapshot(&trainer.parts[DISCRIMINATOR].vs))
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = run(a.path(), 3, false);
    run(b.path(), 1, false);
    let resumed = run(b.path(), 3, true);
    for (x, y) in [(&straight.0, &resumed.0), (&straight.1, &resumed.1)] {
        for (k, t) in x {
            assert!(t.equal(&y[k]), "{k} differs after resume");
        }
    }
    assert!(straight
        .0
        .values()
        .all(|t| t.isfinite().all().int64_value(&[]) != 0));
}

/// Adds a small seeded perturbation to every weight: adaLN-Zero's zero gates would otherwise
/// leave D's backbone blocks and G without gradient, and recomputation untested.
fn perturb(vs: &nn::VarStore, seed: u64) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (_, v)) in vars.iter_mut().enumerate() {
            let noise = TensorRng::new(seed, i as u64).normal(&v.size(), CPU);
            let _ = v.g_add_(&(noise * 0.05));
        }
    });
}

#[test]
fn recomputing_activations_takes_the_same_adversarial_updates() {
    let configs = [
        ("paper", AdversarialConfig::default()),
        (
            "relativistic, aR2, translated and noised inputs, 2 D steps",
            AdversarialConfig {
                loss: AdversarialLoss::Relativistic,
                lambda_r2: 10.0,
                d_steps: 2,
                translate: 3,
                noised_inputs: true,
                ..AdversarialConfig::default()
            },
        ),
    ];
    for (name, config) in configs {
        let mut ends = Vec::new();
        for recompute in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut m = models();
            perturb(&m.parts[GENERATOR].vs, 5);
            perturb(&m.parts[DISCRIMINATOR].vs, 6);
            // RMSProp's first steps are ±lr for gradients far below eps: rounding-level
            // differences (D's forwards batched together when recomputing) would flip them.
            for part in &mut m.parts {
                part.optimizer = Optimizer::new(OptimizerConfig::Rmsprop {
                    lr: 1e-3,
                    alpha: 0.9,
                    eps: 1e-2,
                    weight_decay: 0.0,
                    momentum: 0.0,
                    centered: false,
                })
                .unwrap();
            }
            let mut trainer = Trainer::new(
                "apt",
                dir.path(),
                &train_config(2),
                m.parts,
                TensorRng::new(0, 3),
            )
            .unwrap();
            let mut data = clips();
            let mut step = AdversarialStep::new(
                &m.generator,
                &m.discriminator,
                config,
                &mut data,
                &HashedCaptions,
                2,
                CPU,
            )
            .with_recompute(recompute);
            let mut lines = Vec::new();
            trainer
                .run(&mut step, &mut |l: &apt_flow::train::MetricLine| {
                    lines.push(l.clone())
                })
                .unwrap();
            let g = snapshot(&trainer.parts[GENERATOR].vs);
            let d = snapshot(&trainer.parts[DISCRIMINATOR].vs);
            ends.push((g, d, lines));
        }
        let (plain, recomputed) = (&ends[0], &ends[1]);
        for (x, y) in [(&plain.0, &recomputed.0), (&plain.1, &recomputed.1)] {
            for (k, t) in x {
                let diff = (t - &y[k]).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{name}: {k} differs by {diff:e} with recomputation"
                );
            }
        }
        for (a, b) in plain.2.iter().zip(&recomputed.2) {
            for (key, value) in &a.values {
                let (x, y) = (value.unwrap_or(0.0), b.values[key].unwrap_or(0.0));
                assert!(
                    (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                    "{name}: logged {key} {x} vs {y}"
                );
            }
        }
    }
}
