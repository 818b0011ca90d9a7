//! The device benchmark of `cargo xtask bench gpu` (issue 13; Table 8 of the APT paper): built
//! here, run on a GPU machine by `scripts/gpu_bench.sh`. One measurement per process, one JSON
//! line on stdout:
//!
//! * `latency [--preset seaweed-8b]`: one-step generation `x = z − G(z, c, 1)` with random bf16
//!   weights at the preset's typical latent (seaweed-8b: `[16, 13, 90, 160]`, the latent of a
//!   2 s 1280×720 24 fps video under a 4×8×8 VAE, patch 1×2×2 → 46,800 visual tokens; 256
//!   text tokens), batch 1;
//! * `flow [--preset sd3-medium] [--batch B]`: a rectified-flow training update through the
//!   training loop's own code (bf16 compute, fp32 master weights, AdamW on flat buffers);
//! * `apt [--preset sd3-medium] [--batch B]`: an APT update (D phase with approximated R1,
//!   then G phase) through the loop;
//! * `wan-latency [--preset wan2.1-1.3b] [--latent 16,21,60,104]`: one-step generation with
//!   the Wan 2.1 transformer (random bf16 weights) at 480×832, 81 frames (latent
//!   `[16, 21, 60, 104]`, 32,760 visual tokens) with 512 UMT5-wide text tokens, batch 1
//!   (`scripts/bench_wan_gpu.py` times diffusers' WanTransformer3DModel on the same shapes).
//!
//! Each reports seconds per call (median of `--iters`, after `--warmup`), tokens/s, model
//! FLOPs, MFU against `--peak-tflops` (default 989: H100/H200 SXM dense bf16), and which SDPA
//! kernel libtorch's dispatcher picks for the model's attention shapes.

use std::time::Instant;

use apt_flow::data::{CaptionEncoder, ClipSource, Cursor};
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::train::{
    freeze_variables, OptimizerConfig, Part, Precision, Shard, TrainConfig, Trainer,
};
use apt_flow::{Conditioning, OneStepGenerator, Result, TensorRng};
use apt_gan::adversarial::{AdversarialConfig, AdversarialStep};
use apt_gan::discriminator::{default_taps, AptDiscriminator, DiscriminatorConfig};
use apt_mmdit::analytic::forward_flops;
use apt_mmdit::lora::LoraConfig;
use apt_mmdit::{Mmdit, MmditConfig, Model, ModelConfig, Preset};
use tch::{nn, Device, Kind, Tensor};

/// Random latents of one shape, made on the device (no host work per batch).
struct RandomLatents {
    shape: [i64; 4],
    device: Device,
    cursor: Cursor,
}

impl ClipSource for RandomLatents {
    fn next_clips(&mut self, batch: usize) -> Result<(Tensor, Vec<String>)> {
        self.cursor.position += batch;
        let [c, t, h, w] = self.shape;
        let x = Tensor::randn([batch as i64, c, t, h, w], (Kind::Float, self.device));
        Ok((x, vec![String::new(); batch]))
    }
    fn cursor(&self) -> Cursor {
        self.cursor
    }
    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.cursor = cursor;
        Ok(())
    }
    fn clip_shape(&self) -> [i64; 4] {
        self.shape
    }
}

/// Random text embeddings of the preset's length.
struct RandomText {
    tokens: i64,
    context_dim: i64,
    pooled_dim: i64,
    device: Device,
}

impl CaptionEncoder for RandomText {
    fn encode(&self, captions: &[String], _drop: &[bool]) -> Result<Conditioning> {
        let b = captions.len() as i64;
        Ok(Conditioning {
            context: Tensor::randn(
                [b, self.tokens, self.context_dim],
                (Kind::Float, self.device),
            ),
            pooled: Tensor::randn([b, self.pooled_dim], (Kind::Float, self.device)),
        })
    }
}

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds of each of `iters` calls of `f` after `warmup` calls (device synchronised).
/// `wan-latency`: one-step generation `x = z − G(z, c, 1)` with a Wan 2.1 preset in bf16.
fn wan_latency(args: &[String], device: Device, warmup: usize, iters: usize) -> anyhow::Result<()> {
    let name = flag(args, "--preset", "wan2.1-1.3b");
    let cfg = ModelConfig::preset(&name)?;
    let latent: Vec<i64> = flag(args, "--latent", "16,21,60,104")
        .split(',')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    let text_tokens = 512;
    let vs = nn::VarStore::new(device);
    let model = tch::no_grad(|| Model::new(vs.root(), &cfg))?;
    Precision::Bf16.cast_store(&vs);
    let z = Tensor::randn(
        [1, latent[0], latent[1], latent[2], latent[3]],
        (Kind::Float, device),
    );
    let cond = Conditioning {
        context: Tensor::randn(
            [1, text_tokens, cfg.context_dim() as i64],
            (Kind::Float, device),
        ),
        pooled: Tensor::zeros([1, 0], (Kind::Float, device)),
    };
    let generator = OneStepGenerator::new(&model);
    let seconds = time(device, warmup, iters, || {
        let _x = tch::no_grad(|| generator.generate(&z, &cond)).expect("forward");
    });
    let [pt, ph, pw] = cfg.patch_size().map(|p| p as i64);
    let tokens = latent[1] / pt * (latent[2] / ph) * (latent[3] / pw);
    println!(
        "{}",
        serde_json::json!({
            "bench": "wan-latency", "preset": name, "device": format!("{device:?}"),
            "latent": latent, "visual_tokens": tokens, "text_tokens": text_tokens, "batch": 1,
            "seconds": median(seconds), "precision": "bf16",
        })
    );
    Ok(())
}

fn time(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    synchronize(device);
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            synchronize(device);
            start.elapsed().as_secs_f64()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The SDPA backend libtorch's dispatcher picks for the model's joint attention in bf16:
/// `math`, `flash`, `efficient` (memory-efficient), `cudnn`.
fn sdpa_kernel(cfg: &MmditConfig, tokens: i64, batch: i64, device: Device) -> &'static str {
    let (h, hd) = (cfg.num_heads as i64, cfg.head_dim as i64);
    let q = Tensor::zeros([batch, h, tokens, hd], (Kind::BFloat16, device));
    let choice =
        Tensor::internal_fused_sdp_choice(&q, &q, &q, None::<&Tensor>, 0.0, false, None, false);
    match choice {
        0 => "math",
        1 => "flash",
        2 => "efficient",
        3 => "cudnn",
        _ => "other",
    }
}

fn visual_tokens(cfg: &MmditConfig, input: [usize; 4]) -> i64 {
    let p = cfg.patch_size;
    (input[1] / p[0] * (input[2] / p[1]) * (input[3] / p[2])) as i64
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().cloned().unwrap_or_default();
    let device = Device::cuda_if_available();
    let warmup: usize = flag(&args, "--warmup", "2").parse()?;
    let iters: usize = flag(&args, "--iters", "5").parse()?;
    let peak: f64 = flag(&args, "--peak-tflops", "989").parse::<f64>()? * 1e12;
    let default_preset = if what == "latency" {
        "seaweed-8b"
    } else {
        "sd3-medium"
    };
    let preset = Preset::named(&flag(&args, "--preset", default_preset))?;
    // `--config FILE`: another MMDiT (model TOML) at the preset's input.
    let cfg = match args.iter().position(|a| a == "--config") {
        Some(i) => MmditConfig::from_toml_file(&args[i + 1])?,
        None => preset.config.clone(),
    };
    let input = preset.typical_input;
    let text_tokens = preset.typical_text_tokens;
    let shape = input.map(|v| v as i64);
    let text = RandomText {
        tokens: text_tokens as i64,
        context_dim: cfg.context_dim as i64,
        pooled_dim: cfg.pooled_dim as i64,
        device,
    };
    let tokens = visual_tokens(&cfg, input);
    let kernel = sdpa_kernel(&cfg, tokens + text_tokens as i64, 1, device);
    let f_model = forward_flops(&cfg, input, text_tokens) as f64;
    let precision_name = if args.iter().any(|a| a == "--fp32") {
        "fp32"
    } else {
        "bf16"
    };
    let report = |name: &str, batch: usize, seconds: f64, flops: f64| {
        println!(
            "{}",
            serde_json::json!({
                "bench": name, "preset": preset.name, "device": format!("{device:?}"),
                "latent": input, "patch": cfg.patch_size, "visual_tokens": tokens,
                "text_tokens": text_tokens, "batch": batch, "seconds": seconds,
                "tokens_per_s": (batch as f64) * tokens as f64 / seconds,
                "model_tflops": flops / 1e12, "mfu": flops / seconds / peak,
                "sdpa_kernel": kernel, "precision": precision_name,
                "parameters": apt_mmdit::param_count(&cfg).total(),
            })
        );
    };
    if what == "wan-latency" {
        return wan_latency(&args, device, warmup, iters);
    }
    match what.as_str() {
        "latency" => {
            let vs = nn::VarStore::new(device);
            let model = tch::no_grad(|| Mmdit::new(vs.root(), &cfg))?;
            Precision::Bf16.cast_store(&vs);
            let z = Tensor::randn([1, shape[0], shape[1], shape[2], shape[3]], (Kind::Float, device));
            let cond = text.encode(&[String::new()], &[false])?;
            let generator = OneStepGenerator::new(&model);
            let seconds = time(device, warmup, iters, || {
                let _x = tch::no_grad(|| generator.generate(&z, &cond)).expect("forward");
            });
            report("latency", 1, median(seconds), f_model);
        }
        "flow" => {
            let batch: usize = flag(&args, "--batch", "8").parse()?;
            let vs = nn::VarStore::new(device);
            let model = Mmdit::new(vs.root(), &cfg)?;
            let adamw = OptimizerConfig::Adamw { lr: 1e-4, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 };
            let part = Part::new("model", vs, adamw, Some(0.999))?.with_precision(Precision::Bf16);
            let config = TrainConfig { clip_grad: Some(1.0), ..TrainConfig::new(1_000_000, batch, adamw) };
            let dir = tempfile::tempdir()?;
            let mut trainer = Trainer::new("pretrain", dir.path(), &config, vec![part], TensorRng::new(0, 0))?;
            let mut data = RandomLatents { shape, device, cursor: Cursor::default() };
            let mut step = FlowMatchingStep {
                model: &model,
                data: &mut data,
                text: &text,
                batch,
                shard: Shard::WHOLE,
                recompute: args.iter().any(|a| a == "--recompute"),
                config: FlowMatchingConfig {
                    p_uncond: 0.1,
                    ..FlowMatchingConfig::default()
                },
                device,
            };
            trainer.updates(&mut step, warmup as u64)?;
            let start = Instant::now();
            trainer.updates(&mut step, iters as u64)?;
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            report("flow", batch, seconds, 3.0 * f_model * batch as f64);
        }
        "apt" => {
            let batch: usize = flag(&args, "--batch", "4").parse()?;
            // `--lora R`: adapters of rank R on every attention projection and MLP of G and of
            // D's backbone, the rest frozen (D's heads train); `--fp32` for CPU measurements.
            let lora = match flag(&args, "--lora", "0").parse::<usize>()? {
                0 => None,
                rank => Some(LoraConfig {
                    rank,
                    alpha: None,
                    dropout: 0.0,
                    targets: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"].map(String::from).to_vec(),
                }),
            };
            let precision = if args.iter().any(|a| a == "--fp32") { Precision::Fp32 } else { Precision::Bf16 };
            let with = |build: &mut dyn FnMut() -> apt_flow::Result<()>| -> apt_flow::Result<()> {
                match &lora {
                    None => build(),
                    Some(l) => apt_mmdit::lora::with_lora(l, &mut *build).map(|_| ()),
                }
            };
            let vs_g = nn::VarStore::new(device);
            let mut generator = None;
            with(&mut || {
                generator = Some(Model::from(Mmdit::new(vs_g.root(), &cfg)?));
                Ok(())
            })?;
            let generator = generator.expect("built");
            let vs_d = nn::VarStore::new(device);
            let mut discriminator = None;
            with(&mut || {
                discriminator = Some(AptDiscriminator::new(vs_d.root(), &cfg.clone().into(), &DiscriminatorConfig::default())?);
                Ok(())
            })?;
            let discriminator = discriminator.expect("built");
            if lora.is_some() {
                freeze_variables(&vs_g, |n| !apt_mmdit::lora::is_adapter_variable(n));
                freeze_variables(&vs_d, |n| n.starts_with("backbone.") && !apt_mmdit::lora::is_adapter_variable(n));
            }
            let rmsprop = OptimizerConfig::Rmsprop { lr: 5e-6, alpha: 0.9, eps: 1e-8, weight_decay: 0.0, momentum: 0.0, centered: false };
            let parts = vec![
                Part::new("generator", vs_g, rmsprop, Some(0.995))?.with_precision(precision),
                Part::new("discriminator", vs_d, rmsprop, None)?.with_precision(precision),
            ];
            let config = TrainConfig::new(1_000_000, batch, rmsprop);
            let dir = tempfile::tempdir()?;
            let mut trainer = Trainer::new("apt", dir.path(), &config, parts, TensorRng::new(0, 3))?;
            let mut data = RandomLatents { shape, device, cursor: Cursor::default() };
            let mut step = AdversarialStep::new(&generator, &discriminator, AdversarialConfig::default(), &mut data, &text, batch, device);
            trainer.updates(&mut step, warmup as u64)?;
            let start = Instant::now();
            trainer.updates(&mut step, iters as u64)?;
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            // D phase: G forward, D forward+backward on real, fake and perturbed real (3 × 3);
            // G phase: G forward+backward, D forward+backward to its input (≈ 3). D's backbone
            // stops at its deepest tap.
            let deepest = *default_taps(cfg.depth).iter().max().expect("taps");
            let f_d = forward_flops(&MmditConfig { depth: deepest, ..cfg.clone() }, input, text_tokens) as f64;
            let flops = batch as f64 * (f_model + 9.0 * f_d + 3.0 * f_model + 3.0 * f_d);
            report("apt", batch, seconds, flops);
        }
        _ => anyhow::bail!("usage: gpu_bench latency|flow|apt|wan-latency [--preset NAME] [--batch B] [--warmup W] [--iters K] [--peak-tflops T] [--recompute] [apt: --lora R --fp32]"),
    }
    Ok(())
}
