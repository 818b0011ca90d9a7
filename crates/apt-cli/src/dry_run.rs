//! `apt train --dry-run`: the resolved config, parameter counts, the memory one training step
//! of each stage needs (see `apt_pipeline::memory`) and whether it fits this machine — without
//! building a model, so the 8B preset can be checked on a laptop.

use anyhow::Result;
use apt_flow::train::{Precision, ShardMode};
use apt_gan::discriminator::{default_taps, discriminator_param_count};
use apt_pipeline::memory::{
    estimate, human_bytes, machine_memory, sizing_clip_shape, sizing_vae_config, tokens,
};
use apt_pipeline::stages::stage_steps;
use apt_pipeline::{RunConfig, Stage};

fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether the run can go here, in words: the model against the data and text encoder, then
/// every stage's step against this machine's memory.
fn runs_here(run: &RunConfig, stages: &[Stage]) -> Result<String> {
    let model = run.model_config()?;
    if let Some(dir) = run.model.import_from().filter(|d| !d.exists()) {
        return Ok(format!(
            "not yet: {} is not there (download the pipeline first); the plan below is \
             sized on the `{}` preset",
            dir.display(),
            run.model.preset.as_deref().unwrap_or_default()
        ));
    }
    if let Err(e) = run.check_compatibility(&model) {
        return Ok(format!(
            "no: {e}. The plan below is sized on the preset's typical input; training needs \
             encoders apt-rs does not ship for this model."
        ));
    }
    if let Err(e) = apt_pipeline::preflight::check_run(run, stages) {
        return Ok(format!("no: {e}"));
    }
    let memory = machine_memory().filter(|_| run.device.as_str() == "cpu");
    for &stage in stages {
        if let (Some(available), Some((_, m))) = (memory, estimate(run, stage)?) {
            if m.total() > available {
                return Ok(format!(
                    "no: one {stage} step needs about {}, more than this machine's {}",
                    human_bytes(m.total()),
                    human_bytes(available)
                ));
            }
        }
    }
    Ok(match memory {
        Some(m) => format!("yes (device {}, {} of memory)", run.device, human_bytes(m)),
        None => format!(
            "yes (device {}; its memory is not checked here)",
            run.device
        ),
    })
}

/// Prints the resolved config and the plan; with `world > 1`, also one rank's memory in a
/// data-parallel run of `world` ranks, with and without ZeRO-1 and recomputation.
pub fn print(run: &RunConfig, stages: &[Stage], world: usize) -> Result<()> {
    // The same refusals as the run itself (it would stop at these on any machine).
    run.model_config()?;
    apt_pipeline::check_world_size(run, stages, world)?;
    println!("# resolved config (defaults filled in, --set applied)");
    println!("{}", run.to_toml_string());
    let model = run.model_config()?;
    let p = model.parameter_count();
    println!("# plan");
    println!(
        "model        {}{}: {} blocks × {} wide ({} heads of {}), patch {:?}",
        model.family(),
        match run.model.import_from() {
            Some(dir) => format!(" from {}", dir.display()),
            None => String::new(),
        },
        model.depth(),
        model.hidden_size(),
        model.num_heads(),
        model.head_dim(),
        model.patch_size()
    );
    println!("parameters   teacher / generator {}", commas(p));
    if let Some(cfg) = &run.apt {
        let taps = cfg
            .discriminator
            .taps
            .clone()
            .unwrap_or_else(|| default_taps(model.depth()));
        println!(
            "             discriminator {} (backbone + {} heads at blocks {taps:?})",
            commas(discriminator_param_count(&model, taps.len())),
            taps.len()
        );
    }
    if let (Some(vae), Some(cfg)) = (&run.vae, sizing_vae_config(run)?) {
        let origin = match vae.import_from() {
            Some(dir) => format!("from {} (frozen)", dir.display()),
            None => format!("preset {:?}, trained by the vae stage", vae.preset),
        };
        println!(
            "vae          {origin}: {} parameters, {}× time, {}× space, {} channels; the models \
             see {:?} latents of {:?} clips (its weights counted in every stage's states)",
            commas(apt_vae::parameter_count(&cfg)? as u64),
            cfg.temporal_ratio(),
            cfg.spatial_ratio(),
            cfg.z_dim,
            sizing_clip_shape(run),
            run.data.clip_shape()
        );
    }
    let adapters = [
        (
            "distill",
            run.distill.as_ref().and_then(|d| d.lora.as_ref()),
        ),
        (
            "consistency",
            run.consistency.as_ref().and_then(|c| c.lora.as_ref()),
        ),
        ("apt", run.apt.as_ref().and_then(|a| a.lora.as_ref())),
    ];
    for (stage, lora) in adapters {
        if let Some(lora) = lora {
            let layers = apt_mmdit::linears::linear_layers(&model)
                .iter()
                .filter(|(name, _, _)| lora.matches(name))
                .count();
            let trained = apt_mmdit::linears::lora_parameter_count(&model, lora);
            println!(
                "lora         {stage}: rank {} on {layers} linear layers: {} trained parameters \
                 per model ({:.2}% of it){}, the rest frozen",
                lora.rank,
                commas(trained),
                100.0 * trained as f64 / p as f64,
                if stage == "apt" {
                    " on G and on D's backbone; D's heads train fully"
                } else {
                    ""
                }
            );
        }
    }
    let (_, token_text) = tokens(run, &model, None);
    println!("tokens       {token_text}");
    if let Some(from) = run.model.import_from() {
        println!(
            "teacher      the transformer of {} (not trained)",
            from.display()
        );
    }
    if let Some(from) = run.pretrain.as_ref().and_then(|p| p.import_from()) {
        println!(
            "teacher      imported from {} (not trained)",
            from.display()
        );
    }
    println!("runs here    {}", runs_here(run, stages)?);
    println!(
        "{:<12} {:>7} {:>6} {:>12} {:>12} {:>12}",
        "stage", "steps", "batch", "states", "activations", "per step"
    );
    for &stage in stages {
        if let Some((batch, m)) = estimate(run, stage)? {
            println!(
                "{:<12} {:>7} {:>6} {:>12} {:>12} {:>12}",
                stage.name(),
                stage_steps(run, stage),
                batch,
                human_bytes(m.states),
                human_bytes(m.activations),
                human_bytes(m.total())
            );
        }
    }
    println!(
        "(f32 master weights, gradients, optimizer state and EMA{}, per replica before any \
         sharding; activations ≈ depth × batch × tokens × width × {} bytes)",
        match run.precision {
            Precision::Bf16 => ", plus bf16 working weights and a bf16 teacher",
            Precision::Fp32 => "",
        },
        match run.precision {
            Precision::Bf16 => 34,
            Precision::Fp32 => 68,
        }
    );
    if world > 1 {
        print_per_rank(run, stages, world)?;
    }
    Ok(())
}

/// One rank's memory per step at `world` ranks under each `shard` mode, with or without
/// recomputation as the stage is configured, and under the stage's own `shard`.
fn print_per_rank(run: &RunConfig, stages: &[Stage], world: usize) -> Result<()> {
    println!("# per rank at {world} ranks (data parallel)");
    println!(
        "{:<12} {:>14} {:>9} {:>10} {:>10} {:>10} {:>10} {:>18}",
        "stage",
        "clips per rank",
        "recompute",
        "none",
        "optimizer",
        "gradients",
        "full",
        "this config"
    );
    for &stage in stages {
        let (Some((batch, m)), Some(train)) = (estimate(run, stage)?, run.train_config(stage))
        else {
            continue;
        };
        // The config's batch is global (`print` checked that it splits).
        let (local, global) = (batch / world, batch);
        let recompute = train.recompute;
        let cell = |mode: ShardMode| {
            if stage == Stage::Consistency && mode.splits_weights() {
                // Its target network copies the whole student every update (refused).
                return "-".to_string();
            }
            human_bytes(m.per_rank(batch, local, world, mode, recompute).total())
        };
        let mine = train.shard_mode();
        println!(
            "{:<12} {:>14} {:>9} {:>10} {:>10} {:>10} {:>10} {:>18}",
            stage.name(),
            format!("{local} (of {global})"),
            if recompute { "yes" } else { "no" },
            cell(ShardMode::None),
            cell(ShardMode::Optimizer),
            cell(ShardMode::Gradients),
            cell(ShardMode::Full),
            format!("{} ({mine})", cell(mine)),
        );
    }
    println!(
        "(`shard` in the stage's train table: optimizer = ZeRO-1, gradients = ZeRO-2, full = \
         ZeRO-3 — fp32 weights, gradients, optimizer state and EMA split over the ranks, the \
         compute-precision weights whole (gradients) or a block at a time with recomputation \
         (full); frozen networks stay whole; `recompute = true` keeps each block's input and \
         recomputes the rest in the backward pass)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_numbers_get_commas() {
        assert_eq!(commas(8_037_029_056), "8,037,029,056");
        assert_eq!(commas(999), "999");
    }
}
