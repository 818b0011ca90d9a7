//! `apt sample`: a video from a prompt, in one step by default.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use apt_flow::text::TextConditioner;
use apt_flow::{sample, Guidance, Method, OneStepGenerator, RunConfig, SamplerConfig, TensorRng};
use apt_mmdit::{Mmdit, MmditConfig};
use clap::Args;
use tch::{nn, Device};

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
    shape: Option<[i64; 4]>,
    /// Output: .mp4, .mov, .mkv, .gif or .png (frame grid).
    #[arg(long)]
    out: PathBuf,
}

fn parse_shape(s: &str) -> Result<[i64; 4], String> {
    let v: Vec<i64> = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected C,T,H,W, got {s:?}"))?;
    <[i64; 4]>::try_from(v).map_err(|_| format!("expected C,T,H,W, got {s:?}"))
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
    for name in [
        "generator.safetensors",
        "student.safetensors",
        "teacher.safetensors",
    ] {
        let f = checkpoint.join(name);
        if f.is_file() {
            return Ok((checkpoint.to_path_buf(), f));
        }
    }
    bail!("{}: no generator.safetensors, student.safetensors or teacher.safetensors (expected a run's stage directory, e.g. runs/NAME/apt)", checkpoint.display())
}

/// Generates the clip and writes it, printing the time of each part.
pub fn run(args: SampleArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (dir, weights) = locate(&args.checkpoint)?;
    let cfg = MmditConfig::from_toml_file(dir.join("model.toml"))
        .with_context(|| format!("{} must sit next to model.toml", weights.display()))?;
    let run_cfg = dir
        .parent()
        .map(|r| r.join("config.toml"))
        .filter(|p| p.is_file());
    let shape = match (args.shape, &run_cfg) {
        (Some(s), _) => s,
        (None, Some(path)) => {
            apt_flow::data::TrainData::clip_shape(&RunConfig::from_file(path)?.data)
        }
        (None, None) => bail!(
            "no runs/NAME/config.toml next to {}: give --shape C,T,H,W",
            dir.display()
        ),
    };
    let cache = dir
        .parent()
        .map(|r| r.join("text-cache"))
        .unwrap_or_else(|| PathBuf::from("text-cache"));
    let device = Device::Cpu;

    let start = Instant::now();
    let text = TextConditioner::minilm(&cache, 16, device)?;
    let cond = text.batch(std::slice::from_ref(&args.prompt), &[])?;
    let null = text.null()?;
    let text_time = start.elapsed();

    let vs = nn::VarStore::new(device);
    let model = Mmdit::new(vs.root(), &cfg)?;
    apt_mmdit::load_safetensors(&vs, &weights)?;
    let z = TensorRng::seeded_normal(
        args.seed,
        &[1, shape[0], shape[1], shape[2], shape[3]],
        device,
    );
    let start = Instant::now();
    let video = tch::no_grad(|| -> apt_flow::Result<tch::Tensor> {
        match (args.steps, args.cfg == 1.0) {
            (1, true) => OneStepGenerator::new(&model).generate(&z, &cond),
            (n, true) if n <= 2 => OneStepGenerator::new(&model).generate_steps(&z, &cond, n),
            (n, _) => {
                let g = Guidance {
                    cond: &cond,
                    uncond: Some(&null),
                    scale: args.cfg,
                };
                sample(
                    &model,
                    &z,
                    &g,
                    &SamplerConfig {
                        steps: n,
                        method: Method::Euler,
                        shift: 1.0,
                        cfg_scale: args.cfg,
                    },
                )
            }
        }
    })?;
    let generator_time = start.elapsed();

    let start = Instant::now();
    apt_data::write_video(&args.out, &video.get(0).clamp(-1.0, 1.0), 8.0)?;
    let write_time = start.elapsed();
    println!("prompt        {:?}", args.prompt);
    println!(
        "model         {} ({} steps, cfg {})",
        weights.display(),
        args.steps,
        args.cfg
    );
    println!(
        "text          {:.1} ms (MiniLM: load and encode, or the embedding cache)",
        text_time.as_secs_f64() * 1e3
    );
    println!("generator     {:.1} ms", generator_time.as_secs_f64() * 1e3);
    println!("write         {:.1} ms", write_time.as_secs_f64() * 1e3);
    println!("video         {}", args.out.display());
    Ok(())
}
