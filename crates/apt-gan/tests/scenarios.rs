//! The article's WGAN-GP's worked example: scores and a short training run on PV-like profiles.

use apt_gan::wgan_gp::gan::WganGpConfig;
use apt_gan::wgan_gp::scenarios::{
    crps, energy_score, random_contexts, train_scenarios, true_profiles, ScenarioConfig,
};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

proptest! {
    #[test]
    fn scores_are_non_negative_and_exact_for_point_ensembles(x in prop::collection::vec(-3.0f64..3.0, 4), y in prop::collection::vec(-3.0f64..3.0, 4)) {
        let (x, y) = (Tensor::from_slice(&x).to_kind(Kind::Float), Tensor::from_slice(&y).to_kind(Kind::Float));
        let point = x.view([1, 4]).repeat([5, 1]);
        let es = energy_score(&point, &y);
        prop_assert!((es - (&x - &y).norm().double_value(&[])).abs() < 1e-4, "a point ensemble scores its distance");
        let c = crps(&point, &y);
        prop_assert!((c - (&x - &y).abs().mean(Kind::Float).double_value(&[])).abs() < 1e-5);
        let spread = Tensor::randn([16, 4], (Kind::Float, Device::Cpu));
        prop_assert!(energy_score(&spread, &y) >= -1e-6 && crps(&spread, &y) >= -1e-6);
    }
}

#[test]
fn the_true_source_is_a_daily_profile() {
    let c = random_contexts(200);
    let x = true_profiles(&c);
    assert_eq!(x.size(), vec![200, 24]);
    assert!(x.min().double_value(&[]) >= 0.0);
    // Night hours are dark, noon is bright; cloudier days are dimmer on average.
    let night = x.narrow(1, 0, 3).mean(Kind::Float).double_value(&[]);
    let noon = x.narrow(1, 11, 2).mean(Kind::Float).double_value(&[]);
    assert!(night < 0.05 && noon > 0.4, "night {night}, noon {noon}");
    let clear = true_profiles(
        &Tensor::from_slice(&[0.0f32, 0.0, 0.5])
            .view([1, 3])
            .repeat([500, 1]),
    )
    .mean(Kind::Float)
    .double_value(&[]);
    let cloudy = true_profiles(
        &Tensor::from_slice(&[1.0f32, 0.0, 0.5])
            .view([1, 3])
            .repeat([500, 1]),
    )
    .mean(Kind::Float)
    .double_value(&[]);
    assert!(clear > cloudy + 0.05);
}

#[test]
fn energy_score_falls_over_a_short_training_run() {
    let cfg = ScenarioConfig {
        gan: WganGpConfig {
            in_size: 24,
            cond_in: 3,
            latent_s: 8,
            width: 32,
            layers: 2,
            lambda_gp: 10.0,
            article_compatible: false,
        },
        steps: 80,
        n_critic: 3,
        batch_size: 32,
        lr: 1e-3,
        eval_every: 40,
        test_contexts: 16,
        draws: 32,
        seed: 1,
    };
    let report = train_scenarios(&cfg, |_| {}).unwrap();
    let (first, last) = (&report.curve[0], report.curve.last().unwrap());
    assert_eq!(report.curve.len(), 3);
    eprintln!("energy score / CRPS: {:?}", report.curve);
    assert!(
        last.energy_score < 0.7 * first.energy_score && last.crps < 0.7 * first.crps,
        "{:?}",
        report.curve
    );
    assert!(
        report.oracle.energy_score < last.energy_score,
        "the truth scores best"
    );
}
