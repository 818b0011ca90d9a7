//! How much memory one training step of a stage needs — estimated without building a model, so
//! the 8B preset can be sized on a laptop — and the check that refuses a run that cannot fit
//! before anything is allocated.
//!
//! Memory per step, in f32 (4 bytes per value, what the trainers use):
//! - trained networks: weights + gradients + optimizer state (AdamW 2, RMSProp 1 per weight)
//!   + EMA copy when configured; frozen networks (the teacher): weights only;
//! - activations kept for the backward pass: `depth × batch × tokens × width × 68` bytes, the
//!   34 bytes per token and width of a transformer layer at 16 bits without attention-score
//!   storage (Korthikanti et al. 2022, "Reducing Activation Recomputation", fused attention)
//!   doubled for f32. APT's D step keeps D activations for three batches (real, fake, perturbed
//!   real for aR1); its G step keeps G's and one batch of D's.
//!
//! In bf16 (`precision = "bf16"`) the activations take half of that, the trained networks add
//! bf16 working copies of their weights and gradients, and the frozen teacher is held in bf16.
//!
//! One rank's share in a data-parallel run, under each `shard` mode: [`StepMemory::per_rank`].
//!
//! It is an estimate: libtorch's allocator, workspace buffers and the data pipeline add to it.

use apt_flow::train::{OptimizerConfig, Precision};
use apt_flow::TrainConfig;
use apt_gan::discriminator::{default_taps, discriminator_param_count};
use apt_mmdit::linears::lora_parameter_count;
use apt_mmdit::lora::LoraConfig;
use apt_mmdit::{ModelConfig, Preset};
use apt_vae::WanVaeConfig;

mod per_rank;

pub use per_rank::StepMemory;
use per_rank::{Sharding, Trained};

use crate::config::RunConfig;
use crate::error::{config_error, Result};
use crate::run_dir::Stage;

/// Bytes of one value (the trainers keep f32 weights, gradients and states).
const VALUE: u64 = 4;
/// Activation bytes per layer, token and width at f32 (34 at 16 bits, doubled).
const ACTIVATION_BYTES: u64 = 68;

/// Bytes of the optimizer state of a network of `params` values.
pub fn optimizer_bytes(params: u64, optimizer: &OptimizerConfig) -> u64 {
    params.saturating_mul(VALUE * optimizer.state_slots() as u64)
}

/// Activation bytes with recomputation: every block's input (`VALUE` per token and channel)
/// plus one block's internals.
pub fn recomputed_activation_bytes(depth: usize, width: usize, tokens: usize, batch: usize) -> u64 {
    let per_block = [width, tokens, batch]
        .iter()
        .fold(1u64, |acc, &v| acc.saturating_mul(v as u64));
    per_block
        .saturating_mul(VALUE.saturating_mul(depth as u64))
        .saturating_add(
            per_block
                .saturating_mul(ACTIVATION_BYTES)
                .min(activation_bytes(depth, width, tokens, batch)),
        )
}

/// Bytes of a trained network of `params` values.
pub fn trained_bytes(params: u64, optimizer: &OptimizerConfig, ema: bool) -> u64 {
    params.saturating_mul(bytes_per_value(optimizer, ema))
}

/// Activation bytes of `depth` blocks of width `width` over `tokens` tokens for `batch` clips.
pub fn activation_bytes(depth: usize, width: usize, tokens: usize, batch: usize) -> u64 {
    [depth, width, tokens, batch]
        .iter()
        .fold(ACTIVATION_BYTES, |acc, &v| acc.saturating_mul(v as u64))
}

/// Wan 2.1's 480×832, 81-frame clips under its VAE: the latent its recipe trains on.
pub const WAN_TYPICAL_LATENT: [usize; 4] = [16, 21, 60, 104];

/// Tokens per clip of `frames` frames (the data's when `None`) that every block processes —
/// visual + text for the MMDiT's joint attention, visual for Wan (its text is attended to) —
/// and what the count was sized on.
pub fn tokens(run: &RunConfig, model: &ModelConfig, frames: Option<usize>) -> (usize, String) {
    let [c, t, h, w] = sizing_clip_shape(run).map(|v| v as usize);
    let t = frames.unwrap_or(t);
    let [pt, ph, pw] = model.patch_size();
    let text = if model.joint_text_tokens() {
        run.text.tokens
    } else {
        0
    };
    let (input, source) = if c == model.in_channels() {
        ([c, t, h, w], "the data's clips".to_string())
    } else {
        let typical = match model {
            ModelConfig::Wan(_) => WAN_TYPICAL_LATENT,
            ModelConfig::Mmdit(_) => run
                .model
                .preset
                .as_deref()
                .and_then(|name| Preset::named(name).ok())
                .map(|p| p.typical_input)
                .unwrap_or([model.in_channels(), t, h, w]),
        };
        (typical, "the preset's typical latent".to_string())
    };
    let visual = input[1].div_ceil(pt) * input[2].div_ceil(ph) * input[3].div_ceil(pw);
    (
        visual + text,
        format!(
            "{visual} visual ({}×{}×{}×{} on {source}) + {text} text",
            input[0], input[1], input[2], input[3]
        ),
    )
}

/// The model's clip shape, sized without the files a run reads later: a Wan pipeline's VAE
/// that is not downloaded yet is taken to be Wan 2.1's.
pub fn sizing_clip_shape(run: &RunConfig) -> [i64; 4] {
    run.model_clip_shape().unwrap_or_else(|_| {
        let pixels = run.data.clip_shape();
        match run.vae.is_some() && !run.data.is_latent() {
            true => {
                crate::config::latent_shape_of(&WanVaeConfig::wan21(), pixels).unwrap_or(pixels)
            }
            false => pixels,
        }
    })
}

/// The VAE's config for sizing (a Wan pipeline's VAE that is not downloaded yet: Wan 2.1's).
pub fn sizing_vae_config(run: &RunConfig) -> Result<Option<WanVaeConfig>> {
    let Some(v) = &run.vae else { return Ok(None) };
    match v.vae_config() {
        Ok(c) => Ok(Some(c)),
        Err(_) if run.model.import_from().is_some() => Ok(Some(WanVaeConfig::wan21())),
        Err(e) => Err(e),
    }
}

/// The estimate for `stage` with its micro-batch (`None` when the config has no such stage).
pub fn estimate(run: &RunConfig, stage: Stage) -> Result<Option<(usize, StepMemory)>> {
    if stage == Stage::Vae {
        return vae_estimate(run);
    }
    // A run in latent space keeps its frozen VAE next to every network.
    let vae_frozen = match sizing_vae_config(run)? {
        Some(v) => (apt_vae::parameter_count(&v)? as u64).saturating_mul(VALUE),
        None => 0,
    };
    let estimate = model_estimate(run, stage)?;
    Ok(estimate.map(|(batch, mut m)| {
        m.states = m.states.saturating_add(vae_frozen);
        (batch, m)
    }))
}

/// `m` for a run in `precision`: bf16 halves the activations and adds bf16 working copies of
/// the trained weights and their gradients (2 + 2 bytes each) while the frozen copies shrink
/// to 2 bytes; fp32 leaves it as it is. `trained` and `frozen` count the values of each.
fn in_precision(m: StepMemory, precision: Precision, trained: u64, frozen: u64) -> StepMemory {
    match precision {
        Precision::Fp32 => m,
        Precision::Bf16 => StepMemory {
            states: m
                .states
                .saturating_add(trained.saturating_mul(4))
                .saturating_sub(frozen.saturating_mul(2)),
            activations: m.activations / 2,
            recomputed: m.recomputed / 2,
            ..m
        },
    }
}

/// fp32 bytes per trained value: weights, gradients, optimizer slots, and an EMA copy.
fn bytes_per_value(optimizer: &OptimizerConfig, ema: bool) -> u64 {
    VALUE * (2 + optimizer.state_slots() as u64 + u64::from(ema))
}

/// The VAE stage: the trained VAE's states and its (rough) activations on the data's clips.
fn vae_estimate(run: &RunConfig) -> Result<Option<(usize, StepMemory)>> {
    let (Some(section), Some(t)) = (&run.vae, run.train_config(Stage::Vae)) else {
        return Ok(None);
    };
    let cfg = section.vae_config()?;
    let p = apt_vae::parameter_count(&cfg)? as u64;
    let [_, frames, h, w] = run.data.clip_shape();
    let act = (apt_vae::activation_values(&cfg, frames, h, w) as u64)
        .saturating_mul(VALUE)
        .saturating_mul(t.batch_size as u64);
    Ok(Some((
        t.batch_size,
        StepMemory {
            states: trained_bytes(p, &t.optimizer, t.ema_decay.is_some()),
            optimizer: optimizer_bytes(p, &t.optimizer),
            activations: act,
            recomputed: act,
            sharding: Sharding::of(
                &[Trained {
                    values: p,
                    depth: 1,
                    bytes_per_value: bytes_per_value(&t.optimizer, t.ema_decay.is_some()),
                }],
                Precision::Fp32,
                0,
            ),
        },
    )))
}

/// The model stages' estimate (without the frozen VAE).
fn model_estimate(run: &RunConfig, stage: Stage) -> Result<Option<(usize, StepMemory)>> {
    let model = run.model_config()?;
    let p = model.parameter_count();
    let frames = match stage {
        Stage::AptImage => run
            .apt
            .as_ref()
            .and_then(|a| a.image.as_ref())
            .map(|i| i.frames),
        _ => None,
    };
    if stage == Stage::AptImage && frames.is_none() {
        return Ok(None);
    }
    let (n, _) = tokens(run, &model, frames);
    let act = |depth: usize, batch: usize| activation_bytes(depth, model.hidden_size(), n, batch);
    let act_rc = |depth: usize, batch: usize| {
        recomputed_activation_bytes(depth, model.hidden_size(), n, batch)
    };
    let frozen = p.saturating_mul(VALUE);
    let adapters = |lora: Option<&LoraConfig>| lora.map(|l| lora_parameter_count(&model, l));
    // A stage trains every weight, or (LoRA) only its adapters over a frozen base; the EMA
    // averages what trains.
    let flow_stage = |t: &TrainConfig, frozen_copies: u64, lora: Option<u64>| {
        let (trained, base) = match lora {
            None => (p, 0),
            Some(a) => (a, p),
        };
        let states = trained_bytes(trained, &t.optimizer, t.ema_decay.is_some())
            .saturating_add(base.saturating_mul(VALUE))
            .saturating_add(frozen_copies.saturating_mul(frozen));
        let net = Trained {
            values: trained,
            depth: model.depth(),
            bytes_per_value: bytes_per_value(&t.optimizer, t.ema_decay.is_some()),
        };
        let m = StepMemory {
            states,
            optimizer: optimizer_bytes(trained, &t.optimizer),
            activations: act(model.depth(), t.batch_size),
            recomputed: act_rc(model.depth(), t.batch_size),
            sharding: Sharding::of(&[net], run.precision, 0),
        };
        let frozen_values = frozen_copies.saturating_mul(p).saturating_add(base);
        (
            t.batch_size,
            in_precision(m, run.precision, trained, frozen_values),
        )
    };
    Ok(match stage {
        Stage::Vae => None,
        // Trained student + `frozen_copies` frozen networks of the same size.
        Stage::Pretrain => run.train_config(stage).map(|t| flow_stage(t, 0, None)),
        Stage::Distill => run
            .distill
            .as_ref()
            .map(|c| flow_stage(&c.train, 1, adapters(c.lora.as_ref()))),
        // The student, the frozen teacher and the target network.
        Stage::Consistency => run
            .consistency
            .as_ref()
            .map(|c| flow_stage(&c.train, 2, adapters(c.lora.as_ref()))),
        Stage::AptImage | Stage::Apt => run.apt.as_ref().map(|cfg| {
            let taps = cfg
                .discriminator
                .taps
                .clone()
                .unwrap_or_else(|| default_taps(model.depth()));
            let d_depth = taps.iter().copied().max().unwrap_or(model.depth());
            let pd = discriminator_param_count(&model, taps.len());
            let d_optimizer = cfg.train.optimizer_d.unwrap_or(cfg.train.optimizer);
            // With LoRA: G's and D's backbone's adapters train over frozen copies of the model
            // (D's heads train fully); G's EMA averages what trains.
            let (g_trained, g_base, d_trained, d_base) = match adapters(cfg.lora.as_ref()) {
                None => (p, 0, pd, 0),
                Some(a) => (a, p, pd - p + a, p),
            };
            let base = g_base + d_base;
            let states = trained_bytes(
                g_trained,
                &cfg.train.optimizer,
                cfg.train.ema_decay.is_some(),
            )
            .saturating_add(trained_bytes(d_trained, &d_optimizer, false))
            .saturating_add(base.saturating_mul(VALUE));
            let b = cfg.train.batch_size;
            let d_step = act(d_depth, b).saturating_mul(3);
            let g_step = act(model.depth(), b).saturating_add(act(d_depth, b));
            let d_step_rc = act_rc(d_depth, b).saturating_mul(3);
            let g_step_rc = act_rc(model.depth(), b).saturating_add(act_rc(d_depth, b));
            let nets = [
                Trained {
                    values: g_trained,
                    depth: model.depth(),
                    bytes_per_value: bytes_per_value(
                        &cfg.train.optimizer,
                        cfg.train.ema_decay.is_some(),
                    ),
                },
                Trained {
                    values: d_trained,
                    depth: d_depth,
                    bytes_per_value: bytes_per_value(&d_optimizer, false),
                },
            ];
            let m = StepMemory {
                states,
                optimizer: optimizer_bytes(g_trained, &cfg.train.optimizer)
                    .saturating_add(optimizer_bytes(d_trained, &d_optimizer)),
                activations: d_step.max(g_step),
                recomputed: d_step_rc.max(g_step_rc),
                // G's phase runs D with a graph: D's weights stay whole through it.
                sharding: Sharding::of(&nets, run.precision, d_trained),
            };
            let trained = g_trained.saturating_add(d_trained);
            (b, in_precision(m, run.precision, trained, base))
        }),
    })
}

/// This machine's memory in bytes (`MemTotal`), when the system says.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes as `1.2 GB` / `345 MB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

/// Fails, naming the stage's batch size, when one training step of a stage in `stages` needs
/// more memory than this machine has (CPU runs; a GPU's memory is not known here).
pub fn check_fits(run: &RunConfig, stages: &[Stage]) -> Result<()> {
    if run.device()? != tch::Device::Cpu {
        return Ok(());
    }
    let Some(available) = machine_memory() else {
        return Ok(());
    };
    for &stage in stages {
        if let Some((batch, m)) = estimate(run, stage)? {
            if m.total() > available {
                return Err(config_error(
                    &format!("{}.train.batch_size", stage.section()),
                    format!(
                        "= {batch}: one {stage} step needs about {} ({} states + {} \
                         activations), more than this machine's {}; lower the batch size \
                         (grad_accum keeps the effective batch)",
                        human_bytes(m.total()),
                        human_bytes(m.states),
                        human_bytes(m.activations),
                        human_bytes(available)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Bytes one no-gradient forward of `model` needs for a batch of clips of `shape`
/// `[C, T, H, W]` (input, output, and the widest per-block activations; attention scores when
/// the math path is used), or `None` when the count overflows.
pub fn sample_bytes(model: &ModelConfig, batch: u64, shape: [u64; 4]) -> Option<u64> {
    let [pt, ph, pw] = model.patch_size().map(|p| p as u64);
    let elements = shape.iter().try_fold(batch, |acc, &v| acc.checked_mul(v))?;
    let tokens = (shape[1] / pt.max(1))
        .checked_mul(shape[2] / ph.max(1))?
        .checked_mul(shape[3] / pw.max(1))?;
    let width = model.hidden_size() as u64;
    // Hidden states, q/k/v/out and the MLP's inner layer: about 16 × width per token.
    let per_token = width
        .checked_mul(16)?
        .checked_add((model.ffn_width() as u64).checked_mul(4)?)?;
    let activations = batch.checked_mul(tokens)?.checked_mul(per_token)?;
    let scores = match model.attention() {
        apt_mmdit::AttentionBackend::Math => batch
            .checked_mul(model.num_heads() as u64)?
            .checked_mul(tokens.checked_mul(tokens)?)?,
        _ => 0,
    };
    elements
        .checked_mul(4)?
        .checked_add(activations)?
        .checked_add(scores)?
        .checked_mul(VALUE)
}

#[cfg(test)]
mod tests;
