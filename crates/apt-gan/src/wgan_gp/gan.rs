//! The source article's conditional MLP GAN for probabilistic scenario generation (e.g. PV or load
//! profiles given weather forecasts), as `Generator_linear` / `Discriminator_wassertein`:
//!
//! * generator: `[noise; context]` → Linear/ReLU … Linear → sample;
//! * critic: `[sample; context]` → Linear/LeakyReLU(0.01) … Linear → score;
//! * critic loss: `−(E D(x) − E D(G(z))) + λ_gp · GP`.
//!
//! Two quirks of the article's code are reproduced only with [`WganGpConfig::article_compatible`]:
//! the interpolation weight ε drawn per element instead of per sample, and a final ReLU on the
//! critic's output. Variable names equal the article's modules' `state_dict` keys (`gen.0.weight`,
//! `dis.0.weight`, …), so their weights load as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::losses::{gradient_penalty, interpolation_weights, wgan_critic_loss, Interpolation};

/// Sizes and options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WganGpConfig {
    /// Sample size (e.g. 24 hourly values).
    pub in_size: i64,
    /// Context size (e.g. weather features).
    pub cond_in: i64,
    /// Latent noise size.
    pub latent_s: i64,
    /// Hidden width of both networks (the article uses `gen_w` for both).
    pub width: i64,
    /// Hidden layers of both networks (`gen_l`).
    pub layers: usize,
    /// Gradient-penalty weight.
    pub lambda_gp: f64,
    /// Per-element ε and a final ReLU on the critic, as the article's code does (the old name
    /// `seed_compatible` is accepted).
    #[serde(default, alias = "seed_compatible")]
    pub article_compatible: bool,
}

fn mlp(p: nn::Path, sizes: &[i64]) -> Vec<nn::Linear> {
    // nn.Sequential indices: Linear layers sit at 0, 2, 4, … (activations in between).
    sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| nn::linear(&p / (2 * i), w[0], w[1], Default::default()))
        .collect()
}

/// `Generator_linear`.
#[derive(Debug)]
pub struct WganGpGenerator {
    layers: Vec<nn::Linear>,
    latent: i64,
}

/// `Discriminator_wassertein`.
#[derive(Debug)]
pub struct WganGpCritic {
    layers: Vec<nn::Linear>,
    final_relu: bool,
}

impl WganGpGenerator {
    /// Creates the generator's variables under `p` (`gen`).
    pub fn new(p: nn::Path, cfg: &WganGpConfig) -> Self {
        let mut sizes = vec![cfg.latent_s + cfg.cond_in];
        sizes.extend(std::iter::repeat_n(cfg.width, cfg.layers));
        sizes.push(cfg.in_size);
        Self {
            layers: mlp(p, &sizes),
            latent: cfg.latent_s,
        }
    }

    /// `gen([noise; context])`: `noise` `[B, latent_s]`, `context` `[B, cond_in]` → `[B, in_size]`.
    pub fn forward(&self, noise: &Tensor, context: &Tensor) -> Tensor {
        let mut x = Tensor::cat(&[noise, context], 1);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x);
            if i < last {
                x = x.relu();
            }
        }
        x
    }

    /// `n` scenarios `[n, in_size]` for one context `[cond_in]`, without gradient (noise from
    /// libtorch's generator).
    pub fn sample(&self, n: i64, context: &Tensor) -> Tensor {
        let z = Tensor::randn([n, self.latent], (Kind::Float, context.device()));
        let c = context.reshape([1, -1]).expand([n, -1], false);
        tch::no_grad(|| self.forward(&z, &c))
    }
}

impl WganGpCritic {
    /// Creates the critic's variables under `p` (`dis`).
    pub fn new(p: nn::Path, cfg: &WganGpConfig) -> Self {
        let mut sizes = vec![cfg.in_size + cfg.cond_in];
        sizes.extend(std::iter::repeat_n(cfg.width, cfg.layers));
        sizes.push(1);
        Self {
            layers: mlp(p, &sizes),
            final_relu: cfg.article_compatible,
        }
    }

    /// `dis([sample; context])`: `sample` `[B, in_size]`, `context` `[B, cond_in]` → `[B, 1]`.
    pub fn forward(&self, sample: &Tensor, context: &Tensor) -> Tensor {
        let mut x = Tensor::cat(&[sample, context], 1);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x);
            // LeakyReLU's default slope is 0.01, the seed's `alpha`.
            x = if i < last {
                x.leaky_relu()
            } else if self.final_relu {
                x.relu()
            } else {
                x
            };
        }
        x
    }
}

/// The critic's loss terms.
#[derive(Debug)]
pub struct CriticLoss {
    /// `−(E D(x) − E D(G(z))) + λ_gp · GP`.
    pub loss: Tensor,
    /// `GP`.
    pub gradient_penalty: Tensor,
}

/// The critic loss `−(E D(x) − E D(G(z))) + λ_gp · GP` for `generated` and `real` `[B, in_size]`
/// with `context` `[B, cond_in]` and interpolation weights `eps` (draw them with
/// [`draw_interpolation`]: `[B, 1]` per sample, `[B, in_size]` per element when
/// article-compatible).
pub fn critic_loss(
    critic: &WganGpCritic,
    cfg: &WganGpConfig,
    generated: &Tensor,
    real: &Tensor,
    context: &Tensor,
    eps: &Tensor,
) -> CriticLoss {
    let d_real = critic.forward(real, context);
    let d_fake = critic.forward(generated, context);
    let gp = gradient_penalty(|x| critic.forward(x, context), real, generated, eps);
    CriticLoss {
        loss: wgan_critic_loss(&d_real, &d_fake) + &gp * cfg.lambda_gp,
        gradient_penalty: gp,
    }
}

/// Interpolation weights `ε ~ U(0, 1)` as the configuration asks for: `[B, 1]` per sample, or
/// shaped like `real` per element when `article_compatible`.
pub fn draw_interpolation(cfg: &WganGpConfig, real: &Tensor) -> Tensor {
    interpolation_weights(
        real,
        if cfg.article_compatible {
            Interpolation::PerElement
        } else {
            Interpolation::PerSample
        },
    )
}

/// Reads a config off the article's modules' weights (`gen.0.weight`, … as in their `state_dict`).
pub fn config_from_state_dict(
    tensors: &BTreeMap<String, Tensor>,
    lambda_gp: f64,
) -> Option<WganGpConfig> {
    let layers: Vec<&Tensor> = (0..)
        .map(|i| tensors.get(&format!("gen.{}.weight", 2 * i)))
        .take_while(Option::is_some)
        .flatten()
        .collect();
    let first_d = tensors.get("dis.0.weight")?;
    let (first, last) = (layers.first()?, layers.last()?);
    let width = first.size()[0];
    Some(WganGpConfig {
        in_size: last.size()[0],
        cond_in: first_d.size()[1] - last.size()[0],
        latent_s: first.size()[1] - (first_d.size()[1] - last.size()[0]),
        width,
        layers: layers.len() - 1,
        lambda_gp,
        article_compatible: true,
    })
}

/// What [`run_parity`] compared.
#[derive(Debug, Clone, PartialEq)]
pub struct WganGpParity {
    /// The config read off the weights.
    pub config: WganGpConfig,
    /// Largest difference over the generated samples, critic loss, gradient penalty and the
    /// critic's parameter gradients.
    pub max_abs_diff: f64,
}

/// The name our modules give a tensor of a parity file: the article's modules' own
/// `state_dict` keys (`gen.0.weight`, `dis.2.bias`: the classes keep their layers in
/// `self.gen` / `self.dis`) are taken as they are; a file that prefixed them once more with
/// the module (`gen.gen.0.weight`, `dis.dis.2.bias`) is read too. Gradients follow the same
/// rule after `grad.`. Other tensors keep their names.
pub fn parity_name(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("grad.") {
        return format!("grad.{}", parity_name(rest));
    }
    for module in ["gen.", "dis."] {
        if let Some(rest) = key.strip_prefix(module) {
            if rest.starts_with(module) {
                return rest.to_string();
            }
        }
    }
    key.to_string()
}

/// Recomputes a parity fixture (the article's modules' `state_dict`, keys `gen.0.weight`, …,
/// `dis.0.weight`, … as PyTorch writes them, see [`parity_name`]; inputs `noise`, `context`,
/// `true_samples`, `epsilon`, 0-d `lambda_gp`; expected `generated`, `critic_loss`,
/// `gradient_penalty`, optionally the critic's gradients `grad.dis.*`) in article-compatible mode.
pub fn run_parity(path: &std::path::Path) -> Result<WganGpParity, String> {
    let fx: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| format!("{}: not a readable safetensors file: {e}", path.display()))?
        .into_iter()
        .map(|(k, v)| (parity_name(&k), v))
        .collect();
    let need = |k: &str| {
        fx.get(k)
            .ok_or_else(|| format!("{}: missing tensor `{k}`", path.display()))
    };
    let weights: BTreeMap<String, Tensor> = fx
        .iter()
        .filter(|(k, _)| k.starts_with("gen.") || k.starts_with("dis."))
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    let cfg = config_from_state_dict(&weights, need("lambda_gp")?.double_value(&[])).ok_or_else(
        || {
            format!(
                "{}: expected the article's modules' weights gen.0.weight, …, dis.0.weight, …",
                path.display()
            )
        },
    )?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let gen = WganGpGenerator::new(vs.root() / "gen", &cfg);
    let dis = WganGpCritic::new(vs.root() / "dis", &cfg);
    apt_mmdit::weights::load_tensors_strict(&vs, &weights, path).map_err(|e| e.to_string())?;
    let f32 = |t: &Tensor| t.to_kind(Kind::Float);
    let generated = gen.forward(&f32(need("noise")?), &f32(need("context")?));
    let diff = |a: &Tensor, b: &Tensor| (a - f32(b)).abs().max().double_value(&[]);
    let mut worst = diff(&generated, need("generated")?);
    let loss = critic_loss(
        &dis,
        &cfg,
        &generated,
        &f32(need("true_samples")?),
        &f32(need("context")?),
        &f32(need("epsilon")?),
    );
    worst = worst
        .max(diff(&loss.loss, need("critic_loss")?))
        .max(diff(&loss.gradient_penalty, need("gradient_penalty")?));
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("dis."))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    if params
        .iter()
        .all(|(k, _)| fx.contains_key(&format!("grad.{k}")))
    {
        let grads = Tensor::run_backward(
            &[&loss.loss],
            &params
                .iter()
                .map(|(_, t)| t.shallow_clone())
                .collect::<Vec<_>>(),
            false,
            false,
        );
        for ((k, _), g) in params.iter().zip(&grads) {
            worst = worst.max(diff(g, &fx[&format!("grad.{k}")]));
        }
    }
    Ok(WganGpParity {
        config: cfg,
        max_abs_diff: worst,
    })
}
