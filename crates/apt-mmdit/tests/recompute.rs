//! Activation recomputation gives the same gradients as the plain backward.

use apt_mmdit::{Mmdit, MmditConfig, TapOutput};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn named_grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, v)| {
            let g = v.grad();
            (
                k,
                if g.defined() {
                    g.copy()
                } else {
                    v.zeros_like()
                },
            )
        })
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

fn loss(out: &TapOutput, target: &Tensor) -> Tensor {
    let head = match &out.output {
        Some(o) => (o - target).square().mean(Kind::Float),
        None => Tensor::zeros([], CPU),
    };
    let taps = out
        .taps
        .iter()
        .enumerate()
        .map(|(i, tap)| tap.square().mean(Kind::Float) * (0.1 * (i + 1) as f64));
    taps.fold(head, |acc, x| acc + x)
}

fn check(taps: &[usize], with_output: bool) {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), &cfg).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let noise = v.randn_like() * 0.1;
            v.copy_(&(&v + noise));
        }
    });
    let x = Tensor::randn([2, 4, 2, 4, 6], CPU);
    let t = Tensor::rand([2], CPU);
    let ctx = Tensor::randn([2, 5, 32], CPU);
    let pooled = Tensor::randn([2, 32], CPU);
    let target = Tensor::randn([2, 4, 2, 4, 6], CPU);

    let plain_loss = loss(
        &model
            .forward_with_taps(&x, &t, &ctx, &pooled, taps, with_output)
            .unwrap(),
        &target,
    );
    plain_loss.backward();
    let plain = named_grads(&vs);
    vs.trainable_variables()
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .for_each(|mut g| {
            let _ = g.zero_();
        });

    let re_loss = model
        .backward_with_recompute(&x, &t, &ctx, &pooled, taps, with_output, |o| {
            loss(o, &target)
        })
        .unwrap();
    let recomputed = named_grads(&vs);
    assert!((plain_loss.double_value(&[]) - re_loss.double_value(&[])).abs() < 1e-7);
    assert_eq!(plain.len(), recomputed.len());
    let mut nonzero = 0;
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{name}: |Δgrad| {diff} (scale {scale})"
        );
        if scale > 1e-6 {
            nonzero += 1;
        }
    }
    assert!(
        nonzero > plain.len() / 2,
        "most gradients are non-zero ({nonzero}/{})",
        plain.len()
    );
}

#[test]
fn recomputed_gradients_equal_the_plain_backward() {
    check(&[], true);
}

#[test]
fn recomputed_gradients_with_taps_equal_the_plain_backward() {
    check(&[1, 3], true);
}

#[test]
fn recomputed_gradients_when_stopping_after_the_last_tap() {
    check(&[2, 1], false);
}
