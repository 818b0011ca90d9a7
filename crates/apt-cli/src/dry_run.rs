//! `apt train --dry-run`: the resolved config, parameter counts, and an estimate of the memory
//! one training step of each stage needs — without building a model, so the 8B preset can be
//! checked on a laptop.
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
//! It is an estimate: libtorch's allocator, workspace buffers and the data pipeline add to it.

use anyhow::Result;
use apt_flow::train::OptimizerConfig;
use apt_flow::trainer::TrainerConfig;
use apt_flow::RunConfig;
use apt_gan::adversarial::AptConfig;
use apt_gan::discriminator::{default_taps, discriminator_param_count};
use apt_mmdit::{param_count, MmditConfig, Preset};

use crate::train_cmd::Stage;

/// Bytes of one value (the trainers keep f32 weights, gradients and states).
const VALUE: u64 = 4;
/// Activation bytes per layer, token and width at f32 (34 at 16 bits, doubled).
const ACTIVATION_BYTES: u64 = 68;

/// One stage's memory estimate, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMemory {
    /// Weights, gradients, optimizer state and EMA copies of every network the stage holds.
    pub states: u64,
    /// Activations kept for the backward pass.
    pub activations: u64,
}

impl StepMemory {
    /// Both.
    pub fn total(&self) -> u64 {
        self.states + self.activations
    }
}

/// Bytes of a trained network of `params` values.
pub fn trained_bytes(params: u64, optimizer: &OptimizerConfig, ema: bool) -> u64 {
    params * VALUE * (2 + optimizer.state_slots() as u64 + u64::from(ema))
}

/// Activation bytes of `depth` blocks of width `width` over `tokens` tokens for `batch` clips.
pub fn activation_bytes(depth: usize, width: usize, tokens: usize, batch: usize) -> u64 {
    (depth * width * tokens * batch) as u64 * ACTIVATION_BYTES
}

/// Visual + text tokens per clip, and what the count was sized on.
fn tokens(run: &RunConfig, model: &MmditConfig) -> (usize, String) {
    let [c, t, h, w] = apt_flow::data::TrainData::clip_shape(&run.data).map(|v| v as usize);
    let [pt, ph, pw] = model.patch_size;
    let text = run.text.tokens;
    let (input, source) = if run.check_compatibility(model).is_ok() {
        ([c, t, h, w], "the data's clips".to_string())
    } else {
        let typical = run
            .model
            .preset
            .as_deref()
            .and_then(|name| Preset::named(name).ok())
            .map(|p| p.typical_input)
            .unwrap_or([model.in_channels, t, h, w]);
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

/// The estimate for `stage` (`None` when the config has no such section).
pub fn estimate(run: &RunConfig, stage: Stage) -> Result<Option<(usize, StepMemory)>> {
    let model = run.model_config()?;
    let p = param_count(&model).total();
    let (n, _) = tokens(run, &model);
    let act = |depth: usize, batch: usize| activation_bytes(depth, model.hidden_size(), n, batch);
    let frozen = p * VALUE;
    let flow_stage = |t: &TrainerConfig, frozen_copies: u64| {
        let states = trained_bytes(p, &t.optimizer, t.ema_decay.is_some()) + frozen_copies * frozen;
        (
            t.batch_size,
            StepMemory {
                states,
                activations: act(model.depth, t.batch_size),
            },
        )
    };
    Ok(match stage {
        // Trained student + `frozen_copies` frozen networks of the same size.
        Stage::Pretrain => run.pretrain.as_ref().map(|c| flow_stage(&c.train, 0)),
        Stage::Distill => run.distill.as_ref().map(|c| flow_stage(&c.train, 1)),
        // The student, the frozen teacher and the target network.
        Stage::Consistency => run.consistency.as_ref().map(|c| flow_stage(&c.train, 2)),
        Stage::Apt => match run.apt {
            None => None,
            Some(_) => {
                let cfg = AptConfig::from_run(run)?;
                let taps = cfg
                    .discriminator
                    .taps
                    .clone()
                    .unwrap_or_else(|| default_taps(model.depth));
                let d_depth = taps.iter().copied().max().unwrap_or(model.depth);
                let pd = discriminator_param_count(&model, taps.len());
                let states = trained_bytes(p, &cfg.optimizer_g, true)
                    + trained_bytes(pd, &cfg.optimizer_d, false);
                let b = cfg.batch_size;
                let d_step = 3 * act(d_depth, b);
                let g_step = act(model.depth, b) + act(d_depth, b);
                Some((
                    b,
                    StepMemory {
                        states,
                        activations: d_step.max(g_step),
                    },
                ))
            }
        },
        Stage::All => None,
    })
}

fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints the resolved config and the plan.
pub fn print(run: &RunConfig, stages: &[Stage]) -> Result<()> {
    println!("# resolved config (defaults filled in, --set applied)");
    println!("{}", toml::to_string_pretty(run)?);
    let model = run.model_config()?;
    let p = param_count(&model).total();
    println!("# plan");
    println!(
        "model        {} blocks × {} wide ({} heads of {}), patch {:?}",
        model.depth,
        model.hidden_size(),
        model.num_heads,
        model.head_dim,
        model.patch_size
    );
    println!("parameters   teacher / generator {}", commas(p));
    if run.apt.is_some() {
        let cfg = AptConfig::from_run(run)?;
        let taps = cfg
            .discriminator
            .taps
            .clone()
            .unwrap_or_else(|| default_taps(model.depth));
        println!(
            "             discriminator {} (backbone + {} heads at blocks {taps:?})",
            commas(discriminator_param_count(&model, taps.len())),
            taps.len()
        );
    }
    let (_, token_text) = tokens(run, &model);
    println!("tokens       {token_text}");
    match run.check_compatibility(&model) {
        Ok(()) => println!("runs here    yes (device {})", run.device),
        Err(e) => println!(
            "runs here    no: {e}. The plan below is sized on the preset's typical input; \
             training needs encoders apt-rs does not ship for this model."
        ),
    }
    println!(
        "{:<12} {:>7} {:>6} {:>12} {:>12} {:>12}",
        "stage", "steps", "batch", "states", "activations", "per step"
    );
    for &stage in stages {
        let steps = crate::train_cmd::stage_steps(run, stage)?;
        if let (Some(steps), Some((batch, m))) = (steps, estimate(run, stage)?) {
            println!(
                "{:<12} {:>7} {:>6} {:>12} {:>12} {:>12}",
                format!("{stage:?}").to_lowercase(),
                steps,
                batch,
                gib(m.states),
                gib(m.activations),
                gib(m.total())
            );
        }
    }
    println!(
        "(f32 weights, gradients, optimizer state and EMA, per replica before any sharding; \
         activations ≈ depth × batch × tokens × width × 68 bytes)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_with_ema_holds_five_copies_and_rmsprop_four() {
        let adamw = OptimizerConfig::Adamw {
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let rms = OptimizerConfig::Rmsprop {
            lr: 1e-4,
            alpha: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        };
        assert_eq!(trained_bytes(1000, &adamw, true), 1000 * 4 * 5);
        assert_eq!(trained_bytes(1000, &rms, true), 1000 * 4 * 4);
        assert_eq!(activation_bytes(2, 8, 10, 3), 2 * 8 * 10 * 3 * 68);
    }

    #[test]
    fn big_numbers_get_commas() {
        assert_eq!(commas(8_037_029_056), "8,037,029,056");
        assert_eq!(commas(999), "999");
        assert_eq!(gib(2_500_000_000), "2.5 GB");
    }
}
