//! The math, not just the code: samplers on Gaussian data with its exact velocity field,
//! convergence orders, the shift, the logit-normal sampler, and guidance.

use apt_flow::gaussian::GaussianFlow;
use apt_flow::sampler::{guided_velocity, time_grid};
use apt_flow::timesteps::shift_tensor;
use apt_flow::{
    sample, shift, Conditioning, Guidance, Method, SamplerConfig, TensorRng, TimeDistribution,
    TimestepSampler, VelocityModel,
};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

fn no_text(b: i64) -> Conditioning {
    Conditioning {
        context: Tensor::zeros([b, 1, 1], (Kind::Float, CPU)),
        pooled: Tensor::zeros([b, 1], (Kind::Float, CPU)),
    }
}

fn run(method: Method, steps: usize, field: GaussianFlow, z: &Tensor) -> Tensor {
    let cond = no_text(z.size()[0]);
    let g = Guidance {
        cond: &cond,
        uncond: None,
        scale: 1.0,
    };
    sample(
        &field,
        z,
        &g,
        &SamplerConfig {
            steps,
            method,
            shift: 1.0,
            cfg_scale: 1.0,
        },
    )
    .unwrap()
}

#[test]
fn euler_and_heun_carry_standard_noise_to_the_data_distribution() {
    let field = GaussianFlow {
        mu: 1.5,
        sigma: 0.4,
    };
    let z = TensorRng::seeded_normal(0, &[20_000, 4], CPU);
    for (method, steps) in [(Method::Euler, 200), (Method::Heun, 20)] {
        let x = run(method, steps, field, &z);
        let (mean, std) = (
            x.mean(Kind::Double).double_value(&[]),
            x.std(true).double_value(&[]),
        );
        assert!(
            (mean - 1.5).abs() < 0.01 && (std - 0.4).abs() < 0.01,
            "{method:?}: mean {mean}, std {std}"
        );
    }
}

fn order(method: Method) -> f64 {
    let field = GaussianFlow {
        mu: 2.0,
        sigma: 0.5,
    };
    let z = TensorRng::seeded_normal(1, &[512], CPU);
    let exact = field.exact_endpoint(&z.to_kind(Kind::Double));
    let err = |n| {
        (run(method, n, field, &z) - &exact)
            .abs()
            .max()
            .double_value(&[])
    };
    let errors: Vec<f64> = [16, 32, 64, 128].iter().map(|&n| err(n)).collect();
    let orders: Vec<f64> = errors.windows(2).map(|e| (e[0] / e[1]).log2()).collect();
    orders.iter().sum::<f64>() / orders.len() as f64
}

#[test]
fn measured_convergence_orders_are_one_for_euler_and_two_for_heun() {
    let (euler, heun) = (order(Method::Euler), order(Method::Heun));
    eprintln!("convergence order: Euler {euler:.3}, Heun {heun:.3}");
    assert!((euler - 1.0).abs() < 0.1, "Euler order {euler}");
    assert!((heun - 2.0).abs() < 0.15, "Heun order {heun}");
}

#[test]
fn guidance_extrapolates_from_the_unconditional_velocity() {
    // A model whose velocity is the pooled vector: v_u + w (v_c - v_u) is checkable by hand.
    struct Echo;
    impl VelocityModel for Echo {
        fn velocity(&self, x: &Tensor, _t: &Tensor, c: &Conditioning) -> apt_flow::Result<Tensor> {
            Ok(c.pooled.view([-1, 1]).expand_as(x) + x * 0.0)
        }
    }
    let x = Tensor::zeros([3, 1], (Kind::Float, CPU));
    let cond = Conditioning {
        context: Tensor::zeros([1, 2, 4], (Kind::Float, CPU)),
        pooled: Tensor::from_slice(&[2.0f32]).view([1, 1]),
    };
    let neg = Conditioning {
        context: Tensor::zeros([1, 5, 4], (Kind::Float, CPU)),
        pooled: Tensor::from_slice(&[0.5f32]).view([1, 1]),
    };
    for uncond in [
        &neg,
        &Conditioning {
            context: Tensor::zeros([1, 2, 4], (Kind::Float, CPU)),
            pooled: Tensor::from_slice(&[0.5f32]).view([1, 1]),
        },
    ] {
        let g = Guidance {
            cond: &cond,
            uncond: Some(uncond),
            scale: 4.0,
        };
        let v = guided_velocity(&Echo, &x, 0.5, &g).unwrap();
        assert!((v - (0.5 + 4.0 * 1.5)).abs().max().double_value(&[]) < 1e-6);
    }
    let g = Guidance {
        cond: &cond,
        uncond: None,
        scale: 4.0,
    };
    assert!(guided_velocity(&Echo, &x, 0.5, &g).is_err());
    assert_eq!(SamplerConfig::paper_baseline().network_evaluations(), 50);
}

#[test]
fn the_time_grid_runs_from_noise_to_data() {
    let grid = time_grid(4, 3.0);
    assert_eq!(grid.len(), 5);
    assert_eq!((grid[0], grid[4]), (1.0, 0.0));
    assert!(grid.windows(2).all(|w| w[1] < w[0]));
    assert!(grid[2] > 0.5, "shift > 1 spends more steps near noise");
}

#[test]
fn logit_normal_samples_match_the_density_moments() {
    let (m, s) = (0.3, 0.8);
    let sampler = TimestepSampler {
        distribution: TimeDistribution::LogitNormal { mean: m, std: s },
        shift: 1.0,
    };
    let t = sampler
        .sample(200_000, &mut TensorRng::new(3, 0), CPU)
        .to_kind(Kind::Double);
    // Moments of the density by quadrature over the logit.
    let (mut e1, mut e2) = (0.0, 0.0);
    let n = 20_000;
    for i in 0..n {
        let u = -8.0 + 16.0 * (i as f64 + 0.5) / n as f64; // logit value, standardised
        let w = (-0.5 * u * u).exp() / (2.0 * std::f64::consts::PI).sqrt() * 16.0 / n as f64;
        let x = 1.0 / (1.0 + (-(m + s * u)).exp());
        e1 += w * x;
        e2 += w * x * x;
    }
    let mean = t.mean(Kind::Double).double_value(&[]);
    let var = t.var(true).double_value(&[]);
    assert!((mean - e1).abs() < 3e-3, "mean {mean} vs {e1}");
    assert!(
        (var - (e2 - e1 * e1)).abs() < 2e-3,
        "variance {var} vs {}",
        e2 - e1 * e1
    );
    let logits = (&t / (t.neg() + 1.0)).log();
    assert!((logits.mean(Kind::Double).double_value(&[]) - m).abs() < 0.01);
    assert!((logits.std(true).double_value(&[]) - s).abs() < 0.01);
}

proptest! {
    #[test]
    fn shift_is_the_identity_at_one_fixes_the_ends_and_is_monotone(t in 0.0f64..=1.0, u in 0.0f64..=1.0, s in 0.05f64..50.0) {
        prop_assert!((shift(t, 1.0) - t).abs() < 1e-12);
        prop_assert!(shift(0.0, s).abs() < 1e-12 && (shift(1.0, s) - 1.0).abs() < 1e-12);
        if t < u {
            prop_assert!(shift(t, s) <= shift(u, s));
        }
        prop_assert!((0.0..=1.0).contains(&shift(t, s)));
        let tensor = shift_tensor(&Tensor::from(t), s).double_value(&[]);
        prop_assert!((tensor - shift(t, s)).abs() < 1e-9);
    }

    #[test]
    fn sampled_times_stay_in_the_unit_interval(seed in 0u64..1000, s in 0.2f64..20.0, m in -2.0f64..2.0, sd in 0.1f64..2.0) {
        for distribution in [TimeDistribution::Uniform, TimeDistribution::LogitNormal { mean: m, std: sd }] {
            let t = TimestepSampler { distribution, shift: s }.sample(256, &mut TensorRng::new(seed, 1), CPU);
            prop_assert!(t.min().double_value(&[]) >= 0.0 && t.max().double_value(&[]) <= 1.0);
        }
    }
}
