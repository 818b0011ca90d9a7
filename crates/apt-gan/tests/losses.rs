//! Properties of every loss and penalty.

use apt_gan::losses::interpolation_weights;
use apt_gan::*;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

fn val(x: &Tensor) -> f64 {
    x.double_value(&[])
}

fn logits() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-30.0f64..30.0, 1..16)
}

proptest! {
    #[test]
    fn non_saturating_g_loss_strictly_decreases_as_fake_logits_rise(l in logits(), bump in 0.01f64..5.0) {
        let up: Vec<f64> = l.iter().map(|x| x + bump).collect();
        prop_assert!(val(&non_saturating_generator_loss(&t(&up))) < val(&non_saturating_generator_loss(&t(&l))));
    }

    #[test]
    fn bce_d_loss_is_non_negative_and_falls_as_real_rises_or_fake_falls(real in logits(), fake in logits(), bump in 0.01f64..5.0) {
        prop_assert!(val(&bce_discriminator_loss(&t(&real), &t(&fake))) >= 0.0);
        // Each side against a settled other side (so the change is not lost in a large sum).
        let (settled_fake, settled_real) = (t(&[-60.0]), t(&[60.0]));
        let r_up: Vec<f64> = real.iter().map(|x| x + bump).collect();
        let f_down: Vec<f64> = fake.iter().map(|x| x - bump).collect();
        prop_assert!(val(&bce_discriminator_loss(&t(&r_up), &settled_fake)) < val(&bce_discriminator_loss(&t(&real), &settled_fake)));
        prop_assert!(val(&bce_discriminator_loss(&settled_real, &t(&f_down))) < val(&bce_discriminator_loss(&settled_real, &t(&fake))));
    }

    // (Beyond |l| ≈ 15 the naive `log(1 − σ(l))` loses digits to cancellation; there the softplus
    // form is the accurate one, so the comparison stays where the naive form is exact enough.)
    #[test]
    fn softplus_forms_equal_the_log_sigmoid_forms(real in prop::collection::vec(-15.0f64..15.0, 1..16), fake in prop::collection::vec(-15.0f64..15.0, 1..16)) {
        let n = real.len().min(fake.len());
        let (r, f) = (t(&real[..n]), t(&fake[..n]));
        let naive_d = (r.sigmoid().log().mean(Kind::Double) + (f.sigmoid().neg() + 1.0).log().mean(Kind::Double)).neg();
        let naive_ns = f.sigmoid().log().mean(Kind::Double).neg();
        let naive_mm = (f.sigmoid().neg() + 1.0).log().mean(Kind::Double);
        for (ours, naive) in [
            (bce_discriminator_loss(&r, &f), naive_d),
            (non_saturating_generator_loss(&f), naive_ns),
            (minimax_generator_loss(&f), naive_mm),
        ] {
            let (a, b) = (val(&ours), val(&naive));
            if b.is_finite() {
                prop_assert!((a - b).abs() <= 1e-8 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn losses_stay_finite_for_huge_logits(x in -1e4f64..1e4, y in -1e4f64..1e4) {
        let (r, f) = (t(&[x, -x]), t(&[y, -y]));
        for loss in [
            bce_discriminator_loss(&r, &f),
            non_saturating_generator_loss(&f),
            minimax_generator_loss(&f),
            relativistic_discriminator_loss(&r, &f),
            relativistic_generator_loss(&r, &f),
        ] {
            prop_assert!(val(&loss).is_finite());
        }
        // Gradients too.
        let f = t(&[y]).set_requires_grad(true);
        non_saturating_generator_loss(&f).backward();
        prop_assert!(val(&f.grad().abs().sum(Kind::Double)).is_finite());
    }

    #[test]
    fn hinge_is_zero_once_the_margins_hold(real in prop::collection::vec(1.0f64..50.0, 1..8), fake in prop::collection::vec(-50.0f64..-1.0, 1..8)) {
        prop_assert_eq!(val(&hinge_discriminator_loss(&t(&real), &t(&fake))), 0.0);
        let inside = t(&[0.5]);
        prop_assert!(val(&hinge_discriminator_loss(&inside, &inside.neg())) > 0.0);
    }

    #[test]
    fn relativistic_loss_depends_only_on_the_gap(real in logits(), shift in -20.0f64..20.0) {
        let fake: Vec<f64> = real.iter().map(|x| x - 1.0).collect();
        let moved_r: Vec<f64> = real.iter().map(|x| x + shift).collect();
        let moved_f: Vec<f64> = fake.iter().map(|x| x + shift).collect();
        let a = val(&relativistic_discriminator_loss(&t(&real), &t(&fake)));
        let b = val(&relativistic_discriminator_loss(&t(&moved_r), &t(&moved_f)));
        prop_assert!((a - b).abs() < 1e-9);
        prop_assert!((a - (-1.0f64).exp().ln_1p()).abs() < 1e-9, "softplus(-1)");
    }

    #[test]
    fn gradient_penalty_is_zero_for_a_unit_norm_linear_critic(w in prop::collection::vec(-1.0f64..1.0, 2..6), seed in 0i64..100) {
        let w = t(&w);
        let w = &w / w.norm();
        let critic = |x: &Tensor| x.matmul(&w);
        tch::manual_seed(seed);
        let real = Tensor::randn([5, w.size()[0]], (Kind::Double, Device::Cpu));
        let fake = Tensor::randn([5, w.size()[0]], (Kind::Double, Device::Cpu));
        for how in [Interpolation::PerSample, Interpolation::PerElement] {
            let eps = interpolation_weights(&real, how).to_kind(Kind::Double);
            prop_assert!(val(&gradient_penalty(critic, &real, &fake, &eps)) < 1e-12);
        }
        let doubled = |x: &Tensor| x.matmul(&(&w * 2.0));
        let eps = interpolation_weights(&real, Interpolation::PerSample).to_kind(Kind::Double);
        prop_assert!((val(&gradient_penalty(doubled, &real, &fake, &eps)) - 1.0).abs() < 1e-9, "‖∇‖ = 2 → (2 − 1)²");
    }

    #[test]
    fn exact_r1_of_a_quadratic_d_is_the_closed_form(a in prop::collection::vec(-2.0f64..2.0, 3), x in prop::collection::vec(-3.0f64..3.0, 6), gamma in 0.1f64..10.0) {
        // D(x) = Σ a_i x_i² → ∇D = 2 a ⊙ x → ‖∇D‖² = 4 Σ a_i² x_i².
        let a = t(&a);
        let d = |x: &Tensor| (x.square() * &a).sum_dim_intlist(1, false, Kind::Double);
        let xs = t(&x).view([2, 3]);
        let expected = ((xs.square() * a.square()).sum_dim_intlist(1, false, Kind::Double) * 4.0).mean(Kind::Double) * (gamma / 2.0);
        let r1 = exact_r1_penalty(d, &xs, gamma);
        prop_assert!((val(&r1) - val(&expected)).abs() < 1e-9 * (1.0 + val(&expected)));
    }
}

#[test]
fn approximated_r1_over_lambda_sigma_squared_tends_to_the_exact_gradient_norm() {
    // A smooth D: D(x) = sin(w·x) + 0.5·(v·x)²; many noise draws per point to tame Monte Carlo.
    tch::manual_seed(0);
    let w = Tensor::randn([8], (Kind::Double, Device::Cpu)) * 0.5;
    let v = Tensor::randn([8], (Kind::Double, Device::Cpu)) * 0.3;
    let d = |x: &Tensor| x.matmul(&w).sin() + x.matmul(&v).square() * 0.5;
    let point = Tensor::randn([1, 8], (Kind::Double, Device::Cpu));
    let reps = 20_000;
    let x = point.expand([reps, 8], false).contiguous();
    let exact = val(&exact_r1_penalty(d, &point, 2.0)); // γ/2 = 1 → ‖∇D‖²
    let lambda = 100.0;
    let mut errors = vec![];
    for sigma in [0.1, 0.01, 0.001] {
        let noise = Tensor::randn([reps, 8], (Kind::Double, Device::Cpu));
        let approx =
            val(&approx_r1_penalty(d, &x, lambda, sigma, &noise)) / (lambda * sigma * sigma);
        errors.push((approx - exact).abs() / exact);
    }
    eprintln!("relative error of aR1/(λσ²) vs ‖∇D‖² at σ = 0.1, 0.01, 0.001: {errors:?}");
    assert!(errors[2] < 0.05 && errors[1] < 0.05, "{errors:?}");
}

#[test]
fn approximated_r1_gradients_flow_through_both_branches() {
    let w = t(&[0.3, -0.2]).set_requires_grad(true);
    let d = |x: &Tensor| x.matmul(&w).tanh();
    let real = t(&[1.0, 2.0, -1.0, 0.5]).view([2, 2]);
    let noise = t(&[0.5, -1.0, 1.5, 0.2]).view([2, 2]);
    approx_r1_penalty(d, &real, 100.0, 0.1, &noise).backward();
    let g_both = w.grad().copy();
    // Detaching the perturbed branch changes the gradient: both branches contribute.
    let _ = w.grad().zero_();
    (d(&real) - d(&(&real + &noise * 0.1)).detach())
        .square()
        .mean(Kind::Double)
        .multiply_scalar(100.0)
        .backward();
    assert!(val(&(g_both - w.grad()).abs().sum(Kind::Double)) > 1e-8);
    assert_eq!(
        val(&approx_r2_penalty(d, &real, 1.0, 0.0, &noise)),
        0.0,
        "σ = 0: no penalty"
    );
}
