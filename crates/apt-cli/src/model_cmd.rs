//! `apt model …`: sizes and FLOPs, diffusers parity.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use apt_mmdit::analytic::block_params;
use apt_mmdit::parity::run_parity;
use apt_mmdit::{
    forward_flops, param_count, MmditConfig, ModelConfig, Positions, Preset, WanConfig,
};
use clap::{Args, Subcommand};

/// Subcommands of `apt model`.
#[derive(Subcommand)]
pub enum ModelCommand {
    /// Parameter count, memory and forward FLOPs of a preset or config file.
    Info(InfoArgs),
    /// Compare our model with diffusers' on a recorded input: SD3Transformer2DModel or
    /// WanTransformer3DModel, as the directory's config.json says; the last line is the max abs
    /// difference.
    Parity {
        /// A diffusers `save_pretrained` directory (config.json + safetensors).
        #[arg(long)]
        diffusers: PathBuf,
        /// safetensors with `hidden_states`, `encoder_hidden_states`, `timestep` (0..1000),
        /// SD3's `pooled_projections`, and the expected `sample`.
        #[arg(long)]
        fixture: PathBuf,
    },
    /// Write an exported Wan model (e.g. runs/NAME/apt/generator.safetensors, next to its
    /// model.toml) as a diffusers `transformer/` directory that WanTransformer3DModel and the
    /// Wan pipeline load.
    Export {
        /// The exported weights (its integrity record and model.toml beside it).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The directory to write (config.json + diffusion_pytorch_model*.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Largest shard in GB (diffusers' default, 10); bigger weights are sharded.
        #[arg(long, default_value_t = 10.0)]
        max_shard_gb: f64,
    },
}

/// Arguments of `apt model info`.
#[derive(Args)]
pub struct InfoArgs {
    /// A built-in preset: tiny, small, sd3-medium, seaweed-8b; or Wan 2.1's wan2.1-1.3b,
    /// wan2.1-14b.
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A model config in TOML (see configs/models/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Input latent shape C,T,H,W for the FLOP count (default: the preset's typical input).
    #[arg(long, value_parser = parse_shape)]
    shape: Option<[usize; 4]>,
    /// Number of text tokens for the FLOP count (default: the preset's typical number).
    #[arg(long)]
    text_tokens: Option<usize>,
}

fn parse_shape(s: &str) -> Result<[usize; 4], String> {
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected C,T,H,W (four integers), got {s:?}"))?;
    <[usize; 4]>::try_from(parts)
        .map_err(|_| format!("expected C,T,H,W (four integers), got {s:?}"))
}

/// Dispatches `apt model …`.
pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Info(args) => info(args),
        ModelCommand::Parity { diffusers, fixture } => parity(&diffusers, &fixture),
        ModelCommand::Export {
            checkpoint,
            out,
            max_shard_gb,
        } => export(&checkpoint, &out, max_shard_gb),
    }
}

fn human(n: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    units
        .iter()
        .find(|(s, _)| n >= *s)
        .map(|(s, u)| format!("{:.2}{u}", n / s))
        .unwrap_or_else(|| format!("{n:.0}"))
}

/// Wan 2.1's presets: name → config.
fn wan_preset(name: &str) -> Option<WanConfig> {
    ModelConfig::preset(name).ok()?.as_wan().cloned()
}

/// `apt model export`: a checked export of a Wan model → a diffusers `transformer/` directory.
fn export(checkpoint: &Path, out: &Path, max_shard_gb: f64) -> Result<()> {
    if !(max_shard_gb.is_finite() && max_shard_gb > 0.0) {
        bail!("--max-shard-gb must be a positive number, got {max_shard_gb}");
    }
    let loaded = apt_pipeline::run_dir::load_exported(checkpoint, tch::Device::Cpu)?;
    if loaded.config.as_wan().is_none() {
        bail!(
            "{}: an MMDiT (family \"mmdit\"); only Wan models are written as diffusers \
             directories",
            checkpoint.display()
        );
    }
    let shard = (max_shard_gb * 1e9) as u64;
    loaded.model.save_diffusers_dir(&loaded.vs, out, shard)?;
    println!(
        "wrote {} (WanTransformer3DModel, {} parameters)",
        out.display(),
        loaded.config.parameter_count()
    );
    Ok(())
}

/// `apt model info` for a Wan 2.1 preset: layout, parameters and weights, and the tokens of its
/// 480×832, 81-frame latents `[16, 21, 60, 104]`.
fn wan_info(name: &str, cfg: &WanConfig) {
    let total = cfg.parameter_count();
    println!("model         {name} (Wan 2.1 text-to-video, diffusers WanTransformer3DModel)");
    println!(
        "layout        {} blocks, width {} ({} heads x {}), FFN {}, QK RMSNorm across heads, \
         cross-attention to the text",
        cfg.num_layers,
        cfg.hidden_size(),
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        cfg.ffn_dim
    );
    println!(
        "io            latents {} -> {} channels, patch {:?}, text {} wide (UMT5-XXL), {} time \
         features",
        cfg.in_channels, cfg.out_channels, cfg.patch_size, cfg.text_dim, cfg.freq_dim
    );
    println!(
        "positions     3D RoPE (theta 10000, axes {:?})",
        cfg.rope_axes_dim()
    );
    println!("parameters    {total} ({})", human(total as f64));
    println!(
        "weights       {:.2} GiB fp32, {:.2} GiB bf16",
        total as f64 * 4.0 / 1024f64.powi(3),
        total as f64 * 2.0 / 1024f64.powi(3)
    );
    let [pt, ph, pw] = cfg.patch_size;
    let tokens = 21 / pt * (60 / ph) * (104 / pw);
    println!("input         [C,T,H,W] = [16, 21, 60, 104] (480x832, 81 frames): {tokens} visual tokens, 512 text tokens");
    let flops = cfg.forward_flops([16, 21, 60, 104], 512) as f64;
    println!(
        "forward       {} FLOPs per sample (2 per multiply-add of every matmul, attention \
         included)",
        human(flops)
    );
}

fn info(args: InfoArgs) -> Result<()> {
    if let Some(cfg) = args.preset.as_deref().and_then(wan_preset) {
        wan_info(args.preset.as_deref().unwrap_or_default(), &cfg);
        return Ok(());
    }
    let (name, cfg, typical, text) = match (&args.preset, &args.config) {
        (_, Some(path)) => {
            let cfg = MmditConfig::from_toml_file(path)?;
            let t = cfg.patch_size;
            (
                path.display().to_string(),
                cfg.clone(),
                [cfg.in_channels, 4 * t[0], 16 * t[1], 16 * t[2]],
                77,
            )
        }
        (Some(p), None) => {
            let p = Preset::named(p)?;
            (
                format!("{} ({})", p.name, p.summary),
                p.config,
                p.typical_input,
                p.typical_text_tokens,
            )
        }
        (None, None) => bail!(
            "give --preset NAME ({}) or --config FILE",
            MmditConfig::PRESETS.join(", ")
        ),
    };
    let shape = args.shape.unwrap_or(typical);
    let text = args.text_tokens.unwrap_or(text);
    if shape[0] != cfg.in_channels {
        bail!(
            "--shape: the model takes {} channels, got C = {}",
            cfg.in_channels,
            shape[0]
        );
    }
    for (axis, (&s, &p)) in ["T", "H", "W"]
        .iter()
        .zip(shape[1..].iter().zip(&cfg.patch_size))
    {
        if s == 0 || s % p != 0 {
            bail!("--shape: {axis} = {s} must be a positive multiple of the patch size {p}");
        }
    }
    let count = param_count(&cfg);
    let total = count.total() as f64;
    let positions = match &cfg.positions {
        Positions::Rope3d { theta, .. } => format!(
            "3D RoPE (theta {theta}, axes {:?})",
            cfg.rope_axes_dim().unwrap_or_default()
        ),
        Positions::Sincos2d {
            max_size,
            base_size,
        } => format!("2D sin-cos table {max_size}x{max_size} (base {base_size})"),
    };
    println!("model         {name}");
    println!(
        "layout        {} blocks, width {} ({} heads x {}), MLP x{}, QK-norm {}, attention {:?}",
        cfg.depth,
        cfg.hidden_size(),
        cfg.num_heads,
        cfg.head_dim,
        cfg.mlp_ratio,
        if cfg.qk_norm { "rms" } else { "off" },
        cfg.attention
    );
    println!(
        "io            latents {} -> {} channels, patch {:?}, text {} wide, pooled {} wide",
        cfg.in_channels, cfg.out_channels, cfg.patch_size, cfg.context_dim, cfg.pooled_dim
    );
    println!("positions     {positions}");
    println!("parameters    {} ({})", count.total(), human(total));
    println!("  embeddings  {}", count.embeddings);
    println!(
        "  blocks      {} ({} per block, last block {})",
        count.blocks,
        block_params(&cfg, false),
        block_params(&cfg, true)
    );
    println!("  head        {}", count.head);
    println!(
        "weights       {:.2} GiB fp32, {:.2} GiB bf16",
        total * 4.0 / 1024f64.powi(3),
        total * 2.0 / 1024f64.powi(3)
    );
    let [_, t, h, w] = shape;
    let tokens = t / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    let flops = forward_flops(&cfg, shape, text) as f64;
    println!("input         [C,T,H,W] = {shape:?}: {tokens} visual + {text} text tokens");
    println!(
        "forward       {}FLOP per sample (matmuls; x3 for forward+backward: {}FLOP)",
        human(flops),
        human(3.0 * flops)
    );
    Ok(())
}

fn parity(dir: &std::path::Path, fixture: &std::path::Path) -> Result<()> {
    let report = run_parity(dir, fixture)?;
    println!(
        "model         {} ({} parameters)",
        dir.display(),
        report.parameters
    );
    println!(
        "fixture       {} -> output {:?}, max |expected| {:.4}",
        fixture.display(),
        report.shape,
        report.max_abs_expected
    );
    println!("max abs difference: {:e}", report.max_abs_diff);
    Ok(())
}
