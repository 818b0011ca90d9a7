//! `apt sample`: a video from a prompt, in one step by default. The text length, device and
//! clip shape come from the run's config (`runs/NAME/config.toml`) unless given; the weights
//! are checked (integrity record, finite values) and the clip's memory before anything is
//! allocated.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use apt_flow::TensorRng;
use apt_flow::{sample_with, Conditioning, Guidance, Method, OneStepGenerator, SamplerConfig};

use apt_pipeline::config::parse_device;
use apt_pipeline::latent::{LatentCodec, Space};
use apt_pipeline::memory::{human_bytes, machine_memory, sample_bytes};
use apt_pipeline::preflight::check_device;
use apt_pipeline::run_dir::{load_exported, MODEL_CONFIG};
use apt_pipeline::text::TextConditioner;
use apt_pipeline::{RunConfig, RunDir, Stage};
use clap::Args;

use crate::progress::{bar, stop_flag};

/// Arguments of `apt sample`.
#[derive(Args)]
pub struct SampleArgs {
    /// A stage directory of a run (e.g. runs/NAME/apt) or a weights file inside one; it holds
    /// `model.toml` and `generator.safetensors` / `student.safetensors` / `teacher.safetensors`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The caption.
    #[arg(long)]
    prompt: String,
    /// Network evaluations: 1 (one step), 2 (zero-shot two steps) or N Euler steps.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Classifier-free guidance scale (multi-step sampling of a teacher; 1 = none).
    #[arg(long, default_value_t = 1.0)]
    cfg: f64,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Clip shape C,T,H,W (default: the run's data shape, from runs/NAME/config.toml).
    #[arg(long, value_parser = parse_shape)]
    shape: Option<[u64; 4]>,
    /// Text tokens per caption (default: the run's `text.tokens`; must match training).
    #[arg(long)]
    text_tokens: Option<usize>,
    /// cpu, cuda or cuda:N (default: the run's device).
    #[arg(long)]
    device: Option<String>,
    /// A diffusers AutoencoderKLWan directory to decode the generated latents with (default:
    /// the run's `[vae]`, when it has one; `--shape` is then the latent shape).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A LoRA adapter file (diffusers' layout, e.g. runs/NAME/apt/lora.safetensors) merged into
    /// the checkpoint's weights before sampling: `--checkpoint` is then the base model.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Output: .mp4, .mov, .mkv, .gif or .png (frame grid).
    #[arg(long)]
    out: PathBuf,
}

fn parse_shape(s: &str) -> Result<[u64; 4], String> {
    let bad = || format!("expected four positive integers C,T,H,W, got {s:?}");
    let v: Vec<u64> = s
        .split(',')
        .map(|p| p.trim().parse::<u64>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    <[u64; 4]>::try_from(v).map_err(|_| bad())
}

/// The stage directory and the weights file in it.
fn locate(checkpoint: &Path) -> Result<(PathBuf, PathBuf)> {
    if checkpoint.is_file() {
        let dir = checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        return Ok((dir, checkpoint.to_path_buf()));
    }
    for stage in [Stage::Apt, Stage::Distill, Stage::Pretrain] {
        let f = checkpoint.join(stage.export_file());
        if f.is_file() {
            return Ok((checkpoint.to_path_buf(), f));
        }
    }
    bail!("{}: no generator.safetensors, student.safetensors or teacher.safetensors (expected a run's stage directory, e.g. runs/NAME/apt)", checkpoint.display())
}

/// Generates the clip and writes it, printing the time of each part. Ctrl-C stops a
/// multi-step sampler between steps (exit 130, nothing written).
pub fn run(args: SampleArgs) -> Result<ExitCode> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let stop = stop_flag()?;
    let (dir, weights) = locate(&args.checkpoint)?;
    let run_dir = RunDir::new(dir.parent().map(Path::to_path_buf).unwrap_or_default());
    let config_file = run_dir.config_file();
    let run = match config_file.is_file() {
        true => Some(RunConfig::from_file(&config_file)?),
        false => None,
    };
    let (device_name, device_key) = match (&args.device, &run) {
        (Some(d), _) => (d.as_str(), "--device".to_string()),
        (None, Some(r)) => (
            r.device.as_str(),
            format!("device (of {})", config_file.display()),
        ),
        (None, None) => ("cpu", "--device".to_string()),
    };
    let device = parse_device(device_name)?;
    check_device(device, &device_key)
        .map_err(|e| anyhow::anyhow!("{e} (pass --device cpu to sample here)"))?;
    let tokens = match (args.text_tokens, &run) {
        (Some(0), _) => bail!("--text-tokens must be at least 1"),
        (Some(n), Some(r)) if n != r.text.tokens => bail!(
            "--text-tokens {n}: the model was trained with {} text tokens ({}'s text.tokens); \
             another length gives another video — leave --text-tokens out",
            r.text.tokens,
            config_file.display()
        ),
        (Some(n), _) => n,
        (None, Some(r)) => r.text.tokens,
        (None, None) => bail!(
            "no run config at {}: give --text-tokens N (the text length the model was trained with)",
            config_file.display()
        ),
    };
    let vae_dir = args.vae.clone().or_else(|| {
        run.as_ref()
            .and_then(|r| apt_pipeline::latent::vae_dir(r, &run_dir))
    });
    let space = match &vae_dir {
        Some(d) => Space::Latent(Rc::new(LatentCodec::load(d, device)?)),
        None => Space::Pixels,
    };
    let shape = match (args.shape, &run) {
        (Some(s), _) => s,
        (None, Some(r)) => space.model_shape(r.data.clip_shape()).map(|v| v as u64),
        (None, None) => bail!(
            "no run config at {}: give --shape C,T,H,W",
            config_file.display()
        ),
    };
    let cfg = apt_mmdit::ModelConfig::from_toml_file(dir.join(MODEL_CONFIG))
        .with_context(|| format!("{} must sit next to model.toml", weights.display()))?;
    check_shape(&cfg, shape, device)?;
    let cache = match run.as_ref().and_then(|r| r.text.cache.clone()) {
        Some(c) => c,
        None => run_dir.default_text_cache(),
    };

    let start = Instant::now();
    // A run's own encoder (a Wan pipeline's UMT5 under `[model] from`), else MiniLM.
    let text = match &run {
        Some(r) => TextConditioner::for_run(r, device)?,
        None => TextConditioner::minilm(&cache, tokens, device)?,
    };
    let cond = text.batch(std::slice::from_ref(&args.prompt), &[])?;
    let null = text.null()?;
    let text_time = start.elapsed();

    let loaded = load_exported(&weights, device)?;
    if let Some(adapter) = &args.lora {
        let n = apt_mmdit::lora::merge_adapter_file(&loaded.vs, adapter)?;
        println!("lora          {} ({n} layers merged)", adapter.display());
    }
    let model = loaded.model;
    let [c, t, h, w] = shape.map(|v| v as i64);
    let z = TensorRng::seeded_normal(args.seed, &[1, c, t, h, w], device);
    let start = Instant::now();
    let Some(video) = generate(&model, &z, &cond, &null, &args, &stop)? else {
        println!("sampling stopped before writing anything");
        return Ok(ExitCode::from(130));
    };
    let generator_time = start.elapsed();

    let start = Instant::now();
    let video = space.to_pixels(&video)?;
    let decode_time = start.elapsed();
    // Finite but huge weights give Inf/NaN pixels, which a video file would show as black.
    if tch::no_grad(|| video.isfinite().all().int64_value(&[])) == 0 {
        bail!(
            "{}: the generated video holds NaN or Inf values (the weights, though finite, are \
             out of range); nothing written to {}",
            weights.display(),
            args.out.display()
        );
    }

    let start = Instant::now();
    let clip = video.get(0).clamp(-1.0, 1.0).to_device(tch::Device::Cpu);
    apt_data::write_video(&args.out, &clip, 8.0)?;
    let write_time = start.elapsed();
    println!("prompt        {:?}", args.prompt);
    println!(
        "model         {} ({} steps, cfg {}, {} text tokens, {:?})",
        weights.display(),
        args.steps,
        args.cfg,
        tokens,
        device
    );
    println!(
        "text          {:.1} ms (the text encoder: load and encode, or the embedding cache)",
        text_time.as_secs_f64() * 1e3
    );
    println!("generator     {:.1} ms", generator_time.as_secs_f64() * 1e3);
    if let Some(d) = &vae_dir {
        println!(
            "decode        {:.1} ms (VAE {})",
            decode_time.as_secs_f64() * 1e3,
            d.display()
        );
    }
    println!("write         {:.1} ms", write_time.as_secs_f64() * 1e3);
    println!("video         {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// One step, zero-shot two steps, or `--steps` Euler steps (with CFG when `--cfg` is not 1);
/// the multi-step sampler shows a bar and stops on Ctrl-C (`None`).
fn generate(
    model: &apt_mmdit::Model,
    z: &tch::Tensor,
    cond: &Conditioning,
    null: &Conditioning,
    args: &SampleArgs,
    stop: &AtomicBool,
) -> Result<Option<tch::Tensor>> {
    if args.cfg == 1.0 && args.steps <= 2 {
        let g = OneStepGenerator::new(model);
        let video = tch::no_grad(|| match args.steps {
            1 => g.generate(z, cond),
            n => g.generate_steps(z, cond, n),
        })?;
        return Ok(Some(video));
    }
    let steps_bar = bar(args.steps as u64, "sample");
    let guidance = Guidance {
        cond,
        uncond: Some(null),
        scale: args.cfg,
    };
    let sampler = SamplerConfig {
        steps: args.steps,
        method: Method::Euler,
        shift: 1.0,
        cfg_scale: args.cfg,
    };
    let video = sample_with(model, z, &guidance, &sampler, &mut |done| {
        steps_bar.set_position(done as u64);
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    steps_bar.finish_and_clear();
    Ok(video)
}

/// The clip fits the model (channels, patch multiples) and this machine's memory.
fn check_shape(cfg: &apt_mmdit::ModelConfig, shape: [u64; 4], device: tch::Device) -> Result<()> {
    let [c, t, h, w] = shape;
    let [pt, ph, pw] = cfg.patch_size().map(|p| p as u64);
    if c != cfg.in_channels() as u64 {
        bail!(
            "--shape {c},{t},{h},{w}: the model takes {} channels",
            cfg.in_channels()
        );
    }
    if t % pt != 0 || h % ph != 0 || w % pw != 0 {
        bail!(
            "--shape {c},{t},{h},{w}: T, H and W must be multiples of the patch size {:?}",
            cfg.patch_size()
        );
    }
    let needed = sample_bytes(cfg, 1, shape);
    let available = machine_memory().filter(|_| device == tch::Device::Cpu);
    match (needed, available) {
        (None, _) => bail!("--shape {c},{t},{h},{w}: far too large to generate"),
        (Some(n), Some(a)) if n > a => bail!(
            "--shape {c},{t},{h},{w}: one clip needs about {} of memory, more than this \
             machine's {}",
            human_bytes(n),
            human_bytes(a)
        ),
        _ => Ok(()),
    }
}
