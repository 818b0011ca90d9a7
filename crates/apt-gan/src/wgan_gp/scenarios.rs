//! The article's WGAN-GP doing what it was built for: probabilistic scenario generation. Daily PV-like
//! profiles (24 hourly values) given a weather-like context, from a synthetic source whose
//! conditional distribution is known (so it can be sampled for scoring), trained as a
//! conditional WGAN-GP and scored with the energy score and the CRPS against fresh draws from
//! the true conditional distribution.
//!
//! Source: context `c = (cloud ∈ [0,1], temperature ∈ [−1,1], season ∈ [0,1])`; a clear-sky
//! bell `b_h = exp(−(h − 12)² / (2·w²))` with width `w = 2.5 + 1.5·season`; amplitude
//! `a = 1 − 0.6·cloud + 0.1·temperature`; fluctuations `cloud · Σ_k η_k φ_k(h)` on three smooth
//! bases with `η ~ N(0, 0.3²)`; plus `N(0, 0.02²)` noise; `x_h = max(0, a·b_h + …)`.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use apt_flow::train::{zero_grad, Optimizer, OptimizerConfig};

use super::gan::{critic_loss, draw_interpolation, WganGpConfig, WganGpCritic, WganGpGenerator};
use crate::losses::wgan_generator_loss;

/// Hours per profile.
pub const HOURS: i64 = 24;
/// Context features.
pub const CONTEXT: i64 = 3;

/// The settings of one scenario-generation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    /// The GAN (in_size must be 24, cond_in 3).
    pub gan: WganGpConfig,
    /// Generator updates.
    pub steps: usize,
    /// Critic updates per generator update.
    #[serde(default = "five")]
    pub n_critic: usize,
    /// Profiles per batch.
    pub batch_size: i64,
    /// Adam learning rate (β = (0.5, 0.9), the WGAN-GP paper's).
    pub lr: f64,
    /// Score every this many generator updates.
    pub eval_every: usize,
    /// Contexts in the test set.
    #[serde(default = "default_contexts")]
    pub test_contexts: i64,
    /// Scenarios drawn per context (model and truth).
    #[serde(default = "default_draws")]
    pub draws: i64,
    /// Seed.
    #[serde(default)]
    pub seed: i64,
}

fn five() -> usize {
    5
}
fn default_contexts() -> i64 {
    64
}
fn default_draws() -> i64 {
    64
}

/// `n` random contexts `[n, 3]`: cloud `~ U(0, 1)`, temperature `~ U(−1, 1)`, season
/// `~ U(0, 1)`.
pub fn random_contexts(n: i64) -> Tensor {
    let u = Tensor::rand([n, CONTEXT], (Kind::Float, Device::Cpu));
    let scale = Tensor::from_slice(&[1.0f32, 2.0, 1.0]);
    let offset = Tensor::from_slice(&[0.0f32, -1.0, 0.0]);
    u * scale + offset
}

/// Profiles `[n, 24]` drawn from the true conditional distribution for contexts `[n, 3]`.
pub fn true_profiles(context: &Tensor) -> Tensor {
    let n = context.size()[0];
    let hours = Tensor::arange(HOURS, (Kind::Float, Device::Cpu)).view([1, HOURS]);
    let cloud = context.select(1, 0).view([n, 1]);
    let temp = context.select(1, 1).view([n, 1]);
    let season = context.select(1, 2).view([n, 1]);
    let width = season * 1.5 + 2.5;
    let bell = ((&hours - 12.0).square().neg() / (width.square() * 2.0)).exp();
    let amplitude = cloud.neg() * 0.6 + temp * 0.1 + 1.0;
    let basis: Vec<Tensor> = (1..=3)
        .map(|k| (&hours * (std::f64::consts::PI * k as f64 / 24.0)).sin())
        .collect();
    let eta = Tensor::randn([n, 3], (Kind::Float, Device::Cpu)) * 0.3;
    let fluctuation = basis
        .iter()
        .enumerate()
        .map(|(k, b)| eta.select(1, k as i64).view([n, 1]) * b)
        .fold(
            Tensor::zeros([n, HOURS], (Kind::Float, Device::Cpu)),
            |a, b| a + b,
        );
    let noise = Tensor::randn([n, HOURS], (Kind::Float, Device::Cpu)) * 0.02;
    (amplitude * &bell + &cloud * fluctuation * &bell + noise).clamp_min(0.0)
}

/// Energy score of an ensemble `[m, d]` for one observation `[d]`:
/// `(1/m) Σ ‖X_i − y‖ − (1/2m²) Σ_ij ‖X_i − X_j‖` (lower is better).
pub fn energy_score(ensemble: &Tensor, observation: &Tensor) -> f64 {
    let m = ensemble.size()[0] as f64;
    let to_obs = (ensemble - observation.unsqueeze(0))
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt()
        .sum(Kind::Float)
        .double_value(&[])
        / m;
    let pairwise = ensemble.unsqueeze(1) - ensemble.unsqueeze(0);
    let spread = pairwise
        .square()
        .sum_dim_intlist(2, false, Kind::Float)
        .sqrt()
        .sum(Kind::Float)
        .double_value(&[])
        / (2.0 * m * m);
    to_obs - spread
}

/// CRPS averaged over the dimensions: the one-dimensional energy score per hour, for an
/// ensemble `[m, d]` and one observation `[d]`:
/// `mean_h [(1/m) Σ_i |X_ih − y_h| − (1/2m²) Σ_ij |X_ih − X_jh|]` (lower is better).
pub fn crps(ensemble: &Tensor, observation: &Tensor) -> f64 {
    let m = ensemble.size()[0] as f64;
    let to_obs = (ensemble - observation.unsqueeze(0))
        .abs()
        .mean_dim(0, false, Kind::Float);
    let spread = (ensemble.unsqueeze(1) - ensemble.unsqueeze(0))
        .abs()
        .sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Float)
        / (2.0 * m * m);
    (to_obs - spread).mean(Kind::Float).double_value(&[])
}

/// Scores at one point of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioScore {
    /// Generator updates so far.
    pub step: usize,
    /// Mean energy score of the model's scenarios.
    pub energy_score: f64,
    /// Mean CRPS of the model's scenarios.
    pub crps: f64,
}

/// The whole run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Scores during training.
    pub curve: Vec<ScenarioScore>,
    /// The same scores for ensembles drawn from the true distribution (the floor).
    pub oracle: ScenarioScore,
}

/// Fixed test contexts and observations.
struct TestSet {
    contexts: Tensor,
    observations: Tensor,
}

fn score(
    test: &TestSet,
    draws: i64,
    mut sample: impl FnMut(&Tensor, i64) -> Tensor,
    step: usize,
) -> ScenarioScore {
    let n = test.contexts.size()[0];
    let (mut es, mut cr) = (0.0, 0.0);
    for i in 0..n {
        let ensemble = sample(&test.contexts.get(i), draws);
        let y = test.observations.get(i);
        es += energy_score(&ensemble, &y);
        cr += crps(&ensemble, &y);
    }
    ScenarioScore {
        step,
        energy_score: es / n as f64,
        crps: cr / n as f64,
    }
}

/// Trains the article's WGAN-GP on the synthetic source, scoring every `eval_every` updates.
pub fn train_scenarios(
    cfg: &ScenarioConfig,
    mut progress: impl FnMut(&ScenarioScore),
) -> Result<ScenarioReport, String> {
    if cfg.gan.in_size != HOURS || cfg.gan.cond_in != CONTEXT {
        return Err(format!(
            "scenarios.gan: in_size must be {HOURS} and cond_in {CONTEXT}"
        ));
    }
    if cfg.steps == 0 || cfg.batch_size < 2 || cfg.eval_every == 0 || cfg.n_critic == 0 {
        return Err("scenarios: steps, n_critic, eval_every ≥ 1 and batch_size ≥ 2".into());
    }
    tch::manual_seed(cfg.seed);
    let (g_vs, d_vs) = (
        nn::VarStore::new(Device::Cpu),
        nn::VarStore::new(Device::Cpu),
    );
    let gen = WganGpGenerator::new(g_vs.root() / "gen", &cfg.gan);
    let dis = WganGpCritic::new(d_vs.root() / "dis", &cfg.gan);
    // Adam with β = (0.5, 0.9), as WGAN-GP is usually trained.
    let adam = OptimizerConfig::Adamw {
        lr: cfg.lr,
        betas: [0.5, 0.9],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let (mut opt_g, mut opt_d) = (
        Optimizer::new(adam).map_err(|e| e.to_string())?,
        Optimizer::new(adam).map_err(|e| e.to_string())?,
    );
    let test_contexts = random_contexts(cfg.test_contexts);
    let test = TestSet {
        observations: true_profiles(&test_contexts),
        contexts: test_contexts,
    };
    let model_sample = |gen: &WganGpGenerator, c: &Tensor, m: i64| gen.sample(m, c);
    let mut curve = vec![score(&test, cfg.draws, |c, m| model_sample(&gen, c, m), 0)];
    progress(&curve[0]);
    for step in 1..=cfg.steps {
        for _ in 0..cfg.n_critic {
            let context = random_contexts(cfg.batch_size);
            let real = true_profiles(&context);
            let fake = tch::no_grad(|| {
                gen.forward(
                    &Tensor::randn(
                        [cfg.batch_size, cfg.gan.latent_s],
                        (Kind::Float, Device::Cpu),
                    ),
                    &context,
                )
            });
            let eps = draw_interpolation(&cfg.gan, &real);
            zero_grad(&d_vs);
            critic_loss(&dis, &cfg.gan, &fake, &real, &context, &eps)
                .loss
                .backward();
            opt_d.step(&d_vs, cfg.lr);
        }
        let context = random_contexts(cfg.batch_size);
        let fake = gen.forward(
            &Tensor::randn(
                [cfg.batch_size, cfg.gan.latent_s],
                (Kind::Float, Device::Cpu),
            ),
            &context,
        );
        zero_grad(&g_vs);
        wgan_generator_loss(&dis.forward(&fake, &context)).backward();
        opt_g.step(&g_vs, cfg.lr);
        if step % cfg.eval_every == 0 || step == cfg.steps {
            let s = score(&test, cfg.draws, |c, m| model_sample(&gen, c, m), step);
            progress(&s);
            curve.push(s);
        }
    }
    let oracle = score(
        &test,
        cfg.draws,
        |c, m| true_profiles(&c.reshape([1, -1]).expand([m, -1], false).contiguous()),
        cfg.steps,
    );
    Ok(ScenarioReport { curve, oracle })
}
