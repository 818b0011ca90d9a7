//! The Wan 2.1 transformer (through the family layer, `apt_mmdit::Model`) through the same training loop and sampler as the MMDiT: flow
//! matching trains it (the loss falls), its recomputed backward leaves the plain gradients, and
//! the sampler draws from it.

use apt_flow::data::CaptionEncoder;
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::testing::{tiny_wan_config, FixedClips, HashedCaptions};
use apt_flow::train::{OptimizerConfig, Part, Shard, StepLog, TrainConfig, TrainStep, Trainer};
use apt_flow::{sample, Guidance, Method, SamplerConfig, TensorRng};
use apt_mmdit::{Model, ModelConfig};
use tch::{nn, Device, Tensor};

const CPU: Device = Device::Cpu;

fn model(seed: u64) -> (nn::VarStore, Model) {
    let vs = nn::VarStore::new(CPU);
    let m = apt_flow::rng::with_global_seed(seed, || {
        Model::new(vs.root(), &ModelConfig::Wan(tiny_wan_config(2)))
    })
    .unwrap();
    (vs, m)
}

fn step<'a>(
    m: &'a Model,
    data: &'a mut FixedClips,
    recompute: bool,
) -> FlowMatchingStep<'a, Model> {
    FlowMatchingStep {
        model: m,
        data,
        text: &HashedCaptions,
        batch: 4,
        shard: Shard::WHOLE,
        recompute,
        config: FlowMatchingConfig::default(),
        device: CPU,
    }
}

#[test]
fn recomputed_flow_matching_has_the_plain_gradients() {
    let mut grads = Vec::new();
    for recompute in [false, true] {
        let (vs, m) = model(3);
        let mut data = FixedClips::new(8, 3);
        let loss = step(&m, &mut data, recompute)
            .backward(0, &mut TensorRng::new(5, 0), &mut StepLog::default(), 1)
            .unwrap()
            .double_value(&[]);
        let mut g: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.grad().copy()))
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        grads.push((loss, g));
    }
    let ((plain, a), (recomputed, b)) = (&grads[0], &grads[1]);
    assert!((plain - recomputed).abs() <= 1e-6 * plain.abs().max(1.0));
    let scale = a
        .iter()
        .map(|(_, t)| t.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let gap = (x - y).abs().max().double_value(&[]);
        assert!(gap <= 1e-5 * scale, "{name}: {gap:e} of {scale:e}");
    }
}

#[test]
fn the_loop_trains_wan_and_the_sampler_draws_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, m) = model(7);
    let adamw = OptimizerConfig::Adamw {
        lr: 3e-3,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let config = TrainConfig::new(30, 4, adamw);
    let part = Part::new("model", vs, adamw, None).unwrap();
    let mut trainer = Trainer::new(
        "pretrain",
        dir.path(),
        &config,
        vec![part],
        TensorRng::new(1, 0),
    )
    .unwrap();
    let mut data = FixedClips::new(8, 3);
    let mut lines = Vec::new();
    trainer
        .run(&mut step(&m, &mut data, false), &mut |l: &_| {
            lines.push(apt_flow::train::MetricLine::clone(l))
        })
        .unwrap();
    let mean = |r: std::ops::Range<usize>| {
        r.clone().map(|i| lines[i].value("loss")).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(0..5), mean(25..30));
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    // Two guided Euler steps from noise, as the teacher's sampler runs.
    let cond = HashedCaptions.encode(&["clip 1".into()], &[]).unwrap();
    let null = HashedCaptions.encode(&[String::new()], &[true]).unwrap();
    let z = TensorRng::seeded_normal(0, &[1, 3, 2, 16, 16], CPU);
    let g = Guidance {
        cond: &cond,
        uncond: Some(&null),
        scale: 2.0,
    };
    let cfg = SamplerConfig {
        steps: 2,
        method: Method::Euler,
        shift: 1.0,
        cfg_scale: 2.0,
    };
    let x = sample(&m, &z, &g, &cfg).unwrap();
    assert_eq!(x.size(), z.size());
    assert!(x.isfinite().all().int64_value(&[]) == 1);
}
