//! APT's discriminator on a Wan 2.1 backbone: the depth-scaled taps, the backbone loaded from
//! a Wan teacher's weights, logits per sample, and the recomputed backward equal to the plain.

use apt_flow::testing::tiny_wan_config;
use apt_gan::discriminator::{
    default_taps, discriminator_param_count, load_backbone, AptDiscriminator, DiscriminatorConfig,
};
use apt_mmdit::{Model, ModelConfig};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn wan(depth: usize) -> ModelConfig {
    ModelConfig::Wan(tiny_wan_config(depth))
}

#[test]
fn taps_scale_to_the_released_depths() {
    assert_eq!(default_taps(36), vec![16, 26, 36]);
    assert_eq!(default_taps(30), vec![13, 22, 30]);
    assert_eq!(default_taps(40), vec![18, 29, 40]);
}

#[test]
fn a_wan_backbone_loads_the_teacher_and_its_recomputed_gradients_equal_the_plain_ones() {
    let cfg = wan(4);
    let teacher_vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(1);
    Model::new(teacher_vs.root(), &cfg).unwrap();
    let grads = |recompute: bool| {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = apt_flow::rng::with_global_seed(2, || {
            AptDiscriminator::new(vs.root(), &cfg, &DiscriminatorConfig::default())
        })
        .unwrap();
        load_backbone(&vs, &teacher_vs).unwrap();
        assert_eq!(d.taps(), &[2, 3, 4]);
        let built: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(built as u64, discriminator_param_count(&cfg, 3));
        let x = apt_flow::rng::with_global_seed(3, || Tensor::randn([2, 3, 2, 4, 4], CPU));
        let t = Tensor::from_slice(&[0.3f32, 0.8]);
        let ctx = apt_flow::rng::with_global_seed(4, || {
            Tensor::randn([2, 5, apt_flow::testing::TEXT_WIDTH], CPU)
        });
        let pooled = Tensor::zeros([2, 0], CPU);
        let loss = |logits: &Tensor| (logits * logits).mean(Kind::Float);
        let value = if recompute {
            d.backward_with_recompute(&x, &t, &ctx, &pooled, loss)
                .unwrap()
        } else {
            let logits = d.forward(&x, &t, &ctx, &pooled).unwrap();
            assert_eq!(logits.size(), vec![2]);
            let l = loss(&logits);
            l.backward();
            l.detach()
        };
        (value.double_value(&[]), vs)
    };
    let (plain, vs_a) = grads(false);
    let (recomputed, vs_b) = grads(true);
    assert!((plain - recomputed).abs() <= 1e-6 * plain.abs().max(1.0));
    let (a, b) = (vs_a.variables(), vs_b.variables());
    let mut worst = 0.0f64;
    for (name, v) in &a {
        let (ga, gb) = (v.grad(), b[name].grad());
        // The output head after the last tap never runs in D (no gradient either way).
        assert_eq!(ga.defined(), gb.defined(), "{name}");
        if !ga.defined() {
            assert!(["proj_out", "scale_shift_table"]
                .iter()
                .any(|head| name == &format!("backbone.{head}")
                    || name.starts_with(&format!("backbone.{head}."))));
            continue;
        }
        worst = worst.max((ga - gb).abs().max().double_value(&[]));
    }
    assert!(worst < 1e-5, "largest gradient difference {worst}");
    // The backbone came from the teacher.
    let teacher = teacher_vs.variables();
    let w = "blocks.0.attn1.to_q.weight";
    assert_eq!(
        (&a[&format!("backbone.{w}")] - &teacher[w])
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
}
