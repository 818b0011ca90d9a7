//! Approximated vs exact R1 on the APT discriminator (`small`, math attention so that exact R1's
//! double backward works), and the cost of one APT step with each. Run by `cargo xtask bench gan`.
//!
//! * `r1_study study`: per clip, `E_ε (D(x) − D(x + σε))² / σ²` (32 noise draws) against the exact
//!   `‖∇ₓD(x)‖²`, at several σ: Pearson correlation across clips and the mean ratio.
//! * `r1_study step approx|exact`: median time of one D step (non-saturating loss + penalty) +
//!   one G step, and this process's peak resident memory (run each in its own process); exact
//!   R1 runs on the math attention path it needs, aR1 on the fused SDPA kernel.

use std::time::Instant;

use apt_data::shapes::{ShapesConfig, Split};
use apt_gan::discriminator::{AptDiscriminator, DiscriminatorConfig};
use apt_gan::{
    approx_r1_penalty, bce_discriminator_loss, exact_r1_penalty, non_saturating_generator_loss,
};
use apt_mmdit::{AttentionBackend, Mmdit, Preset};
use tch::{nn, Device, Kind, Tensor};

struct Setup {
    d: AptDiscriminator,
    vs_d: nn::VarStore,
    g: Mmdit,
    vs_g: nn::VarStore,
    real: Tensor,
    t: Tensor,
    ctx: Tensor,
    pooled: Tensor,
}

fn setup(batch: i64, attention: AttentionBackend) -> Setup {
    tch::manual_seed(0);
    let mut cfg = Preset::named("small").expect("preset").config;
    cfg.attention = attention;
    let vs_d = nn::VarStore::new(Device::Cpu);
    let d = AptDiscriminator::new(
        vs_d.root(),
        &cfg.clone().into(),
        &DiscriminatorConfig::default(),
    )
    .expect("D");
    let vs_g = nn::VarStore::new(Device::Cpu);
    let g = Mmdit::new(vs_g.root(), &cfg).expect("G");
    // A trained-looking D: non-zero modulation everywhere.
    tch::no_grad(|| {
        for vs in [&vs_d, &vs_g] {
            for (_, mut v) in vs.variables() {
                let noise = v.randn_like() * 0.02;
                v.copy_(&(&v + noise));
            }
        }
    });
    let shapes = ShapesConfig::new(8, 32, 32);
    let clips: Vec<Tensor> = (0..batch as u64)
        .map(|i| shapes.sample(1, i, Split::All).expect("render").video)
        .collect();
    Setup {
        d,
        vs_d,
        g,
        vs_g,
        real: Tensor::stack(&clips, 0),
        t: Tensor::rand([batch], (Kind::Float, Device::Cpu)),
        ctx: Tensor::randn([batch, 16, 384], (Kind::Float, Device::Cpu)),
        pooled: Tensor::randn([batch, 384], (Kind::Float, Device::Cpu)),
    }
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn study() {
    let s = setup(16, AttentionBackend::Math);
    let d = |x: &Tensor, i: i64| {
        s.d.forward(
            x,
            &s.t.narrow(0, i, 1),
            &s.ctx.narrow(0, i, 1),
            &s.pooled.narrow(0, i, 1),
        )
        .expect("D")
    };
    let b = s.real.size()[0];
    let exact: Vec<f64> = (0..b)
        .map(|i| exact_r1_penalty(|x| d(x, i), &s.real.narrow(0, i, 1), 2.0).double_value(&[]))
        .collect();
    println!("R1 study: small D (math attention), 16 moving-shapes clips, 32 noise draws per clip");
    for sigma in [0.1, 0.03, 0.01, 0.003, 0.001] {
        let approx: Vec<f64> = (0..b)
            .map(|i| {
                let x = s
                    .real
                    .narrow(0, i, 1)
                    .expand([32, -1, -1, -1, -1], false)
                    .contiguous();
                let noise = x.randn_like();
                let t = s.t.narrow(0, i, 1).expand([32], false);
                let (c, p) = (
                    s.ctx.narrow(0, i, 1).expand([32, -1, -1], false),
                    s.pooled.narrow(0, i, 1).expand([32, -1], false),
                );
                tch::no_grad(|| {
                    approx_r1_penalty(
                        |y| s.d.forward(y, &t, &c, &p).expect("D"),
                        &x,
                        1.0,
                        sigma,
                        &noise,
                    )
                })
                .double_value(&[])
                    / (sigma * sigma)
            })
            .collect();
        let ratio = approx.iter().zip(&exact).map(|(a, e)| a / e).sum::<f64>() / b as f64;
        println!(
            "  sigma {sigma:<6} correlation {:.3}  mean aR1/(sigma^2 * |grad D|^2) {:.3}",
            pearson(&approx, &exact),
            ratio
        );
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn step(penalty: &str) {
    // Exact R1 needs the math attention path (double backward); aR1 keeps the fused kernel.
    let attention = if penalty == "exact" {
        AttentionBackend::Math
    } else {
        AttentionBackend::Sdpa
    };
    let s = setup(4, attention);
    let mut times = vec![];
    for i in 0..6 {
        let start = Instant::now();
        // D step: non-saturating loss + penalty, backward.
        let fake = tch::no_grad(|| {
            &s.real
                - s.g
                    .forward(
                        &s.real.randn_like(),
                        &Tensor::ones([4], (Kind::Float, Device::Cpu)),
                        &s.ctx,
                        &s.pooled,
                    )
                    .expect("G")
        });
        let d = |x: &Tensor| s.d.forward(x, &s.t, &s.ctx, &s.pooled).expect("D");
        let loss = bce_discriminator_loss(&d(&s.real), &d(&fake));
        let reg = match penalty {
            "exact" => exact_r1_penalty(d, &s.real, 2.0 * 100.0 * 0.01 * 0.01),
            _ => approx_r1_penalty(d, &s.real, 100.0, 0.01, &s.real.randn_like()),
        };
        (loss + reg).backward();
        // G step.
        let z = s.real.randn_like();
        let fake = &z
            - s.g
                .forward(
                    &z,
                    &Tensor::ones([4], (Kind::Float, Device::Cpu)),
                    &s.ctx,
                    &s.pooled,
                )
                .expect("G");
        non_saturating_generator_loss(&d(&fake)).backward();
        for vs in [&s.vs_d, &s.vs_g] {
            apt_flow::train::zero_grad(vs);
        }
        if i >= 1 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("APT step (D + G), small, batch 4 of 3x8x32x32, {penalty} R1 ({attention:?} attention): {:.0} ms median, peak RSS {:.0} MB", times[times.len() / 2] * 1e3, peak_rss_mb());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("study") => study(),
        Some("step") => step(args.get(1).map(String::as_str).unwrap_or("approx")),
        _ => eprintln!("usage: r1_study study | step approx|exact"),
    }
}
