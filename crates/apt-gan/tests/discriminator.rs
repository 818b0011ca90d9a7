//! The APT discriminator: taps, shapes, backbone loading, early stop, and R1 through it.

use apt_flow::{TensorRng, TimeDistribution, TimestepSampler};
use apt_gan::discriminator::{
    default_taps, discriminator_param_count, load_backbone, AptDiscriminator, DiscriminatorConfig,
};
use apt_gan::{approx_r1_penalty, exact_r1_penalty};
use apt_mmdit::{AttentionBackend, Mmdit, MmditConfig};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn tiny() -> MmditConfig {
    MmditConfig::preset("tiny").unwrap()
}

fn randomise(vs: &nn::VarStore, scale: f64) {
    tch::no_grad(|| {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let noise = v.randn_like() * scale;
            v.copy_(&(&v + noise));
        }
    });
}

struct Inputs {
    t: Tensor,
    ctx: Tensor,
    pooled: Tensor,
}

fn inputs(b: i64, l: i64) -> Inputs {
    Inputs {
        t: Tensor::rand([b], CPU),
        ctx: Tensor::randn([b, l, 32], CPU),
        pooled: Tensor::randn([b, 32], CPU),
    }
}

#[test]
fn taps_follow_the_paper_and_any_input_size_works() {
    assert_eq!(default_taps(36), vec![16, 26, 36]);
    assert_eq!(default_taps(6), vec![3, 4, 6]);
    assert_eq!(default_taps(1), vec![1]);
    let vs = nn::VarStore::new(Device::Cpu);
    let d =
        AptDiscriminator::new(vs.root(), &tiny().into(), &DiscriminatorConfig::default()).unwrap();
    assert_eq!(d.taps(), &[1, 2, 3]);
    let built: i64 = vs
        .trainable_variables()
        .iter()
        .map(|v| v.numel() as i64)
        .sum();
    assert_eq!(built as u64, discriminator_param_count(&tiny().into(), 3));
    for (thw, l) in [([1, 4, 4], 3), ([4, 8, 12], 7), ([2, 6, 2], 1)] {
        let x = Tensor::randn([2, 4, thw[0], thw[1], thw[2]], CPU);
        let i = inputs(2, l);
        assert_eq!(
            d.forward(&x, &i.t, &i.ctx, &i.pooled).unwrap().size(),
            vec![2]
        );
    }
    let bad = DiscriminatorConfig {
        taps: Some(vec![0, 4]),
        ..Default::default()
    };
    assert!(
        AptDiscriminator::new(nn::VarStore::new(Device::Cpu).root(), &tiny().into(), &bad).is_err()
    );
}

#[test]
fn the_backbone_loads_the_diffusion_weights_and_stops_after_the_last_tap() {
    let teacher_vs = nn::VarStore::new(Device::Cpu);
    let _teacher = Mmdit::new(teacher_vs.root(), &tiny()).unwrap();
    randomise(&teacher_vs, 0.1);
    let vs = nn::VarStore::new(Device::Cpu);
    let d = AptDiscriminator::new(
        vs.root(),
        &tiny().into(),
        &DiscriminatorConfig {
            taps: Some(vec![1]),
            time_shift: 1.0,
            times: None,
        },
    )
    .unwrap();
    load_backbone(&vs, &teacher_vs).unwrap();
    let teacher = teacher_vs.variables();
    for (k, v) in vs
        .variables()
        .iter()
        .filter(|(k, _)| k.starts_with("backbone."))
    {
        assert!(v.equal(&teacher[&k["backbone.".len()..]]), "{k}");
    }
    // With one tap after block 1, blocks 2 and 3 and the output head take no part.
    let x = Tensor::randn([2, 4, 2, 4, 4], CPU);
    let i = inputs(2, 3);
    d.forward(&x, &i.t, &i.ctx, &i.pooled)
        .unwrap()
        .sum(Kind::Float)
        .backward();
    for (k, v) in vs.variables() {
        let used = !k.contains("transformer_blocks.1.")
            && !k.contains("transformer_blocks.2.")
            && !k.starts_with("backbone.norm_out")
            && !k.starts_with("backbone.proj_out");
        let g = v.grad();
        let has_grad = g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0;
        if !used {
            assert!(!has_grad, "{k} should not get a gradient");
        }
    }
    let wrong = nn::VarStore::new(Device::Cpu);
    let mut other = tiny();
    other.depth = 2;
    let _m = Mmdit::new(wrong.root(), &other).unwrap();
    assert!(load_backbone(&vs, &wrong)
        .unwrap_err()
        .to_string()
        .contains("transformer_blocks.2"));
}

#[test]
fn d_times_follow_the_shift() {
    let vs = nn::VarStore::new(Device::Cpu);
    let d = AptDiscriminator::new(
        vs.root(),
        &tiny().into(),
        &DiscriminatorConfig {
            taps: None,
            time_shift: 12.0,
            times: None,
        },
    )
    .unwrap();
    let t = d.times_from_uniform(&Tensor::from_slice(&[0.0f32, 0.5, 1.0]));
    let v: Vec<f32> = Vec::try_from(&t).unwrap();
    assert!(
        (v[0] - 0.0).abs() < 1e-6 && (v[1] - 12.0 / 13.0).abs() < 1e-6 && (v[2] - 1.0).abs() < 1e-6
    );
    // The default sampler draws exactly shift(U(0, 1), s) from the stream.
    let (mut a, mut b) = (TensorRng::new(5, 0), TensorRng::new(5, 0));
    let drawn = d.sample_times(64, &mut a, Device::Cpu);
    let by_hand = d.times_from_uniform(&b.uniform(&[64], Device::Cpu));
    assert!(drawn.equal(&by_hand));
}

#[test]
fn d_times_can_follow_another_sampler_or_the_teachers() {
    let parse = |s: &str| -> DiscriminatorConfig { toml::from_str(s).unwrap() };
    let uniform = parse("times = { distribution = { kind = \"uniform\" } }");
    let sampler = uniform.time_sampler().unwrap();
    assert_eq!(sampler.shift, 1.0);
    assert_eq!(sampler.distribution, TimeDistribution::Uniform);
    let teacher = parse("time_shift = 12.0\ntimes = \"teacher\"");
    assert!(teacher.time_sampler().is_err(), "unresolved \"teacher\"");
    let teachers = TimestepSampler {
        distribution: TimeDistribution::LogitNormal {
            mean: 0.0,
            std: 1.0,
        },
        shift: 3.0,
    };
    let resolved = teacher.with_teacher_times(&teachers);
    assert_eq!(resolved.time_sampler().unwrap(), teachers);
    let vs = nn::VarStore::new(Device::Cpu);
    let d = AptDiscriminator::new(vs.root(), &tiny().into(), &resolved).unwrap();
    let t = d.sample_times(4096, &mut TensorRng::new(1, 0), Device::Cpu);
    // Logit-normal(0, 1) shifted by 3: median shift(0.5, 3) = 0.75.
    let median = t.median().double_value(&[]);
    assert!((median - 0.75).abs() < 0.03, "median {median}");
    assert!(toml::from_str::<DiscriminatorConfig>("times = \"student\"").is_err());
    let bad = parse("times = { distribution = { kind = \"uniform\" }, shift = -1.0 }");
    let err = bad
        .validate("apt.discriminator", 6)
        .unwrap_err()
        .to_string();
    assert!(err.contains("apt.discriminator.times.shift"), "{err}");
}

#[test]
fn approximated_r1_grows_with_roughness_and_exact_r1_runs_through_the_math_path() {
    let mut cfg = tiny();
    cfg.attention = AttentionBackend::Math;
    let vs = nn::VarStore::new(Device::Cpu);
    let d = AptDiscriminator::new(
        vs.root(),
        &cfg.clone().into(),
        &DiscriminatorConfig::default(),
    )
    .unwrap();
    randomise(&vs, 0.05);
    let x = Tensor::randn([4, 4, 2, 4, 4], CPU);
    let i = inputs(4, 3);
    let noise = Tensor::randn([4, 4, 2, 4, 4], CPU);
    let ar1 = |d: &AptDiscriminator| {
        approx_r1_penalty(
            |y| d.forward(y, &i.t, &i.ctx, &i.pooled).unwrap(),
            &x,
            100.0,
            0.01,
            &noise,
        )
        .double_value(&[])
    };
    let smooth = ar1(&d);
    // A steeper D (its logit scale ×3, so its gradient ×3): aR1 grows ×9.
    tch::no_grad(|| {
        let mut w = vs.variables()["out_proj.weight"].shallow_clone();
        let scaled = &w * 3.0;
        w.copy_(&scaled);
    });
    let rough = ar1(&d);
    assert!(
        (rough / smooth - 9.0).abs() < 0.01,
        "aR1 {smooth} → {rough}"
    );
    // Exact R1 needs a double backward through attention: the math path provides it.
    let r1 = exact_r1_penalty(|y| d.forward(y, &i.t, &i.ctx, &i.pooled).unwrap(), &x, 1.0);
    r1.backward();
    let total: f64 = vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad())
        .filter(|g| g.defined())
        .map(|g| g.abs().sum(Kind::Float).double_value(&[]))
        .sum();
    assert!(r1.double_value(&[]) > 0.0 && total.is_finite() && total > 0.0);
}
