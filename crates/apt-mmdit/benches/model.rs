//! Forward and forward+backward of the `tiny` and `small` presets on their typical inputs
//! (batch 2), CPU. Run with `cargo bench -p apt-mmdit`; the PyTorch comparison is
//! `cargo xtask bench model`.

use apt_mmdit::{Mmdit, Preset};
use criterion::{criterion_group, criterion_main, Criterion};
use tch::{nn, Device, Kind, Tensor};

fn bench_preset(c: &mut Criterion, name: &str) {
    let preset = Preset::named(name).expect("preset");
    let cfg = &preset.config;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), cfg).expect("model");
    // Non-zero modulation so every branch does real work.
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&(v.randn_like() * 0.02));
        }
    });
    let [ch, t, h, w] = preset.typical_input.map(|d| d as i64);
    let cpu = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([2, ch, t, h, w], cpu);
    let time = Tensor::rand([2], cpu);
    let ctx = Tensor::randn(
        [2, preset.typical_text_tokens as i64, cfg.context_dim as i64],
        cpu,
    );
    let pooled = Tensor::randn([2, cfg.pooled_dim as i64], cpu);
    let params = vs.trainable_variables();

    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.bench_function("forward", |b| {
        b.iter(|| tch::no_grad(|| model.forward(&x, &time, &ctx, &pooled).unwrap()))
    });
    group.bench_function("forward+backward", |b| {
        b.iter(|| {
            let v = model.forward(&x, &time, &ctx, &pooled).unwrap();
            let loss = v.square().mean(Kind::Float);
            Tensor::run_backward(&[&loss], &params, false, false)
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_preset(c, "tiny");
    bench_preset(c, "small");
}

criterion_group!(model, benches);
criterion_main!(model);
