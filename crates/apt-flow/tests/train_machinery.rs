//! Optimizers against torch.optim (fixture from scripts/make_optimizer_fixture.py), state
//! save/restore, schedules, EMA, the non-finite guard, and checkpoints.

use std::collections::HashMap;
use std::path::PathBuf;

use apt_flow::train::checkpoint::{self, TrainState};
use apt_flow::train::{
    clip_grad_norm, zero_grad, Decay, Ema, LrSchedule, NonFiniteGuard, Optimizer, OptimizerConfig,
};
use apt_flow::TensorRng;
use tch::{nn, Device, Kind, Tensor};

fn fixture() -> HashMap<String, Tensor> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optimizers.safetensors");
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn variants() -> Vec<(&'static str, OptimizerConfig)> {
    vec![
        (
            "adamw",
            OptimizerConfig::Adamw {
                lr: 1e-2,
                betas: [0.9, 0.99],
                eps: 1e-8,
                weight_decay: 0.05,
            },
        ),
        (
            "rmsprop",
            OptimizerConfig::Rmsprop {
                lr: 1e-2,
                alpha: 0.9,
                eps: 1e-8,
                weight_decay: 0.0,
                momentum: 0.0,
                centered: false,
            },
        ),
        (
            "rmsprop_full",
            OptimizerConfig::Rmsprop {
                lr: 1e-2,
                alpha: 0.95,
                eps: 1e-6,
                weight_decay: 0.01,
                momentum: 0.5,
                centered: true,
            },
        ),
    ]
}

/// Parameters `a`, `b` with the fixture's initial values.
fn params(fx: &HashMap<String, Tensor>) -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    for k in ["a", "b"] {
        let _ = vs.root().var_copy(k, &fx[&format!("param.{k}")]);
    }
    vs
}

/// Feeds gradient `step` of the fixture (through `⟨p, g⟩`, whose gradient is exactly g).
fn feed(vs: &nn::VarStore, fx: &HashMap<String, Tensor>, step: usize) {
    zero_grad(vs);
    let vars = vs.variables();
    let loss = ["a", "b"]
        .iter()
        .map(|k| (&vars[*k] * &fx[&format!("grad.{step}.{k}")]).sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    loss.backward();
}

#[test]
fn adamw_and_rmsprop_match_torch_optim() {
    let fx = fixture();
    for (name, cfg) in variants() {
        let vs = params(&fx);
        let mut opt = Optimizer::new(cfg).unwrap();
        let mut worst: f64 = 0.0;
        for step in 0..5 {
            feed(&vs, &fx, step);
            opt.step(&vs, cfg.lr());
            let vars = vs.variables();
            for k in ["a", "b"] {
                let d = (&vars[k] - &fx[&format!("{name}.after.{step}.{k}")])
                    .abs()
                    .max()
                    .double_value(&[]);
                worst = worst.max(d);
            }
        }
        eprintln!("{name}: max abs diff vs torch.optim over 5 steps {worst:e}");
        assert!(worst <= 1e-6, "{name}: {worst}");
    }
}

#[test]
fn optimizer_state_round_trips_mid_run() {
    let fx = fixture();
    for (name, cfg) in variants() {
        // Straight run.
        let vs = params(&fx);
        let mut opt = Optimizer::new(cfg).unwrap();
        for step in 0..5 {
            feed(&vs, &fx, step);
            opt.step(&vs, cfg.lr());
        }
        // Interrupted after 2 steps: weights + state saved and restored into fresh objects.
        let vs1 = params(&fx);
        let mut first = Optimizer::new(cfg).unwrap();
        for step in 0..2 {
            feed(&vs1, &fx, step);
            first.step(&vs1, cfg.lr());
        }
        let state = first.state_tensors("optimizer");
        let vs2 = params(&fx);
        tch::no_grad(|| {
            for (k, mut v) in vs2.variables() {
                v.copy_(&vs1.variables()[&k]);
            }
        });
        let mut second = Optimizer::new(cfg).unwrap();
        second
            .load_state(&state, "optimizer", first.steps_taken(), &vs2)
            .unwrap();
        for step in 2..5 {
            feed(&vs2, &fx, step);
            second.step(&vs2, cfg.lr());
        }
        for k in ["a", "b"] {
            assert!(
                vs.variables()[k].equal(&vs2.variables()[k]),
                "{name}: resumed run differs"
            );
        }
    }
}

#[test]
fn schedules_warm_up_then_decay() {
    let s = LrSchedule {
        warmup_steps: 10,
        decay: Decay::Cosine { min_factor: 0.1 },
    };
    assert!((s.lr(1.0, 5, 110) - 0.5).abs() < 1e-12);
    assert!((s.lr(1.0, 10, 110) - 1.0).abs() < 1e-12);
    assert!((s.lr(1.0, 60, 110) - 0.55).abs() < 1e-12);
    assert!((s.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
    let c = LrSchedule {
        warmup_steps: 0,
        decay: Decay::Constant,
    };
    assert_eq!(c.lr(3e-4, 999, 10), 3e-4);
}

#[test]
fn gradient_clipping_bounds_the_global_norm() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs
        .root()
        .var_copy("p", &Tensor::zeros([4], (Kind::Float, Device::Cpu)));
    (&p * Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]))
        .sum(Kind::Float)
        .backward();
    let before = clip_grad_norm(&vs, 1.0);
    assert!((before - 5.0).abs() < 1e-5);
    assert!((p.grad().norm().double_value(&[]) - 1.0).abs() < 1e-4);
}

#[test]
fn ema_tracks_the_weights() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs
        .root()
        .var_copy("p", &Tensor::zeros([2], (Kind::Float, Device::Cpu)));
    let mut ema = Ema::new(&vs, 0.9);
    tch::no_grad(|| p.copy_(&Tensor::ones([2], (Kind::Float, Device::Cpu))));
    ema.update(&vs);
    ema.update(&vs);
    let target = nn::VarStore::new(Device::Cpu);
    let q = target
        .root()
        .var_copy("p", &Tensor::zeros([2], (Kind::Float, Device::Cpu)));
    ema.copy_to(&target).unwrap();
    assert!((q.double_value(&[0]) - 0.19).abs() < 1e-6, "1 - 0.9²");
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs
        .root()
        .var_copy("p", &Tensor::ones([2], (Kind::Float, Device::Cpu)));
    (&p * 2.0).sum(Kind::Float).backward();
    let mut guard = NonFiniteGuard::new(3);
    assert!(guard.check(0.5, &vs, 1).unwrap());
    assert!(!guard.check(f64::NAN, &vs, 2).unwrap());
    assert!(!guard.check(f64::INFINITY, &vs, 3).unwrap());
    assert!(
        guard.check(0.4, &vs, 4).unwrap(),
        "a good step resets the streak"
    );
    (&p * f64::NAN).sum(Kind::Float).backward(); // NaN gradients
    assert!(!guard.check(0.3, &vs, 5).unwrap());
    assert!(!guard.check(0.3, &vs, 6).unwrap());
    let err = guard.check(0.3, &vs, 7).unwrap_err().to_string();
    assert!(
        err.contains("3 non-finite") && err.contains("step 7"),
        "{err}"
    );
    assert_eq!(guard.skipped_total, 5);
}

#[test]
fn checkpoints_round_trip_and_survive_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs
        .root()
        .var_copy("w", &Tensor::randn([3, 3], (Kind::Float, Device::Cpu)));
    let cfg = OptimizerConfig::Rmsprop {
        lr: 1e-3,
        alpha: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
        centered: false,
    };
    let mut opt = Optimizer::new(cfg).unwrap();
    let ema = Ema::new(&vs, 0.995);
    let mut rng = TensorRng::new(1, 2);
    let guard = NonFiniteGuard::new(5);
    let mut saved = Vec::new();
    for step in 1..=4u64 {
        (&w * 1.0).sum(Kind::Float).backward();
        opt.step(&vs, 1e-3);
        let _ = rng.normal(&[4], Device::Cpu);
        let state = TrainState {
            stage: "test",
            step,
            models: vec![("model".into(), vs.variables().into_iter().collect())],
            emas: vec![("ema".into(), &ema)],
            optimizers: vec![("optimizer".into(), &opt)],
            rng: Some(&rng),
            cursor: Some(apt_flow::Cursor {
                epoch: 0,
                position: step as usize,
            }),
            guard: &guard,
            extra: serde_json::json!({"loss": 0.5}),
        };
        saved.push(checkpoint::save(dir.path(), &state, 2).unwrap());
    }
    assert_eq!(
        checkpoint::manifests(dir.path()).len(),
        2,
        "older checkpoints are pruned"
    );
    let (loaded, rejected) = checkpoint::load_latest(dir.path()).unwrap().unwrap();
    assert!(rejected.is_empty());
    assert_eq!(loaded.manifest.step, 4);
    assert_eq!(loaded.manifest.cursor.unwrap().position, 4);
    assert_eq!(loaded.manifest.rng.as_ref().unwrap(), &rng);
    let fresh = nn::VarStore::new(Device::Cpu);
    let w2 = fresh
        .root()
        .var_copy("w", &Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)));
    loaded.restore_model(&fresh).unwrap();
    assert!(w2.equal(&w));
    assert_eq!(loaded.part("ema").len(), 1);
    assert_eq!(loaded.part("optimizer").len(), 1);

    // Truncate the newest weights: the previous checkpoint is used, and the reason reported.
    let newest = saved[3].with_extension("safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let (older, rejected) = checkpoint::load_latest(dir.path()).unwrap().unwrap();
    assert_eq!(older.manifest.step, 3);
    assert!(
        rejected[0].contains("step-000000004.safetensors") && rejected[0].contains("truncated"),
        "{rejected:?}"
    );
    let err = checkpoint::load(&saved[3]).unwrap_err().to_string();
    assert!(err.contains("truncated or corrupted"), "{err}");
    // No temporary files are left behind.
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}
