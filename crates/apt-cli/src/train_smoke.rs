//! `apt model train-smoke`: a short, real rectified-flow training run of the MMDiT on generated
//! clips of coloured Gaussian blobs moving in one of four directions, conditioned on their
//! caption. Until the data and flow crates land, caption words are fixed random vectors
//! (seeded), standing in for a text encoder. Prints loss and speed; writes a checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use apt_mmdit::{save_safetensors, Mmdit, MmditConfig, Preset};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tracing::info;

const COLOURS: [(&str, [f64; 3]); 4] = [
    ("red", [1.0, -0.8, -0.8]),
    ("green", [-0.8, 1.0, -0.8]),
    ("blue", [-0.8, -0.8, 1.0]),
    ("yellow", [1.0, 1.0, -0.8]),
];
const DIRECTIONS: [(&str, [f64; 2]); 4] = [
    ("left", [-1.0, 0.0]),
    ("right", [1.0, 0.0]),
    ("up", [0.0, -1.0]),
    ("down", [0.0, 1.0]),
];
const WORDS: [&str; 11] = [
    "a", "red", "green", "blue", "yellow", "blob", "moves", "left", "right", "up", "down",
];

/// Arguments of `apt model train-smoke`.
#[derive(Args)]
pub struct TrainSmokeArgs {
    /// Model preset (must take RGB: in_channels = 3).
    #[arg(long, default_value = "small", conflicts_with = "config")]
    preset: String,
    /// Model config in TOML instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Clip shape T,H,W (default: the preset's typical input, or 8,32,32).
    #[arg(long, value_parser = parse_thw)]
    clip: Option<[i64; 3]>,
    /// Optimisation steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Clips per step.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Where the checkpoint goes.
    #[arg(long, default_value = "runs/train-smoke")]
    out: PathBuf,
}

fn parse_thw(s: &str) -> Result<[i64; 3], String> {
    let v: Vec<i64> = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected T,H,W, got {s:?}"))?;
    <[i64; 3]>::try_from(v).map_err(|_| format!("expected T,H,W, got {s:?}"))
}

/// A batch of clips `[B, 3, T, H, W]` in [-1, 1] with their caption word ids `[B, 5]`.
fn render(batch: i64, [t, h, w]: [i64; 3]) -> (Tensor, Tensor) {
    let cpu = (Kind::Float, Device::Cpu);
    let colour = Tensor::randint(4, [batch], (Kind::Int64, Device::Cpu));
    let direction = Tensor::randint(4, [batch], (Kind::Int64, Device::Cpu));
    let palette = Tensor::from_slice(&COLOURS.iter().flat_map(|c| c.1).collect::<Vec<f64>>())
        .view([4, 3])
        .to_kind(Kind::Float);
    let moves = Tensor::from_slice(&DIRECTIONS.iter().flat_map(|d| d.1).collect::<Vec<f64>>())
        .view([4, 2])
        .to_kind(Kind::Float);
    let radius = (h.min(w) as f64) / 8.0;
    let speed = (w.min(h) as f64) / (2.0 * t as f64); // crosses a quarter..half of the frame
    let start = Tensor::rand([batch, 2], cpu)
        * Tensor::from_slice(&[w as f32 / 2.0, h as f32 / 2.0])
        + Tensor::from_slice(&[w as f32 / 4.0, h as f32 / 4.0]);
    let frames = Tensor::arange(t, cpu).view([1, t, 1]);
    let centre =
        start.unsqueeze(1) + moves.index_select(0, &direction).unsqueeze(1) * frames * speed; // [B, T, 2]
    let xs = Tensor::arange(w, cpu).view([1, 1, 1, w]);
    let ys = Tensor::arange(h, cpu).view([1, 1, h, 1]);
    let cx = centre.select(2, 0).view([batch, t, 1, 1]);
    let cy = centre.select(2, 1).view([batch, t, 1, 1]);
    let blob = ((&xs - cx).square() + (&ys - cy).square())
        .neg()
        .divide_scalar(2.0 * radius * radius)
        .exp(); // [B, T, H, W]
    let rgb = palette.index_select(0, &colour).view([batch, 3, 1, 1, 1]);
    let background = -0.9;
    let clip = (rgb - background) * blob.unsqueeze(1) + background;
    // caption: "a <colour> blob moves <direction>"
    let ids = Tensor::stack(
        &[
            Tensor::zeros([batch], (Kind::Int64, Device::Cpu)),
            &colour + 1,
            Tensor::full([batch], 5, (Kind::Int64, Device::Cpu)),
            Tensor::full([batch], 6, (Kind::Int64, Device::Cpu)),
            &direction + 7,
        ],
        1,
    );
    (clip, ids)
}

/// Fixed word vectors standing in for a text encoder: tokens `[B, 5, D]` and pooled `[B, P]`.
struct Captions {
    words: Tensor,
    pool: Tensor,
}

impl Captions {
    fn new(cfg: &MmditConfig) -> Self {
        let cpu = (Kind::Float, Device::Cpu);
        Self {
            words: Tensor::randn([WORDS.len() as i64, cfg.context_dim as i64], cpu),
            pool: Tensor::randn([cfg.context_dim as i64, cfg.pooled_dim as i64], cpu)
                / (cfg.context_dim as f64).sqrt(),
        }
    }

    fn embed(&self, ids: &Tensor) -> (Tensor, Tensor) {
        let tokens =
            self.words
                .index_select(0, &ids.reshape([-1]))
                .view([ids.size()[0], ids.size()[1], -1]);
        let pooled = tokens.mean_dim(1, false, Kind::Float).matmul(&self.pool);
        (tokens, pooled)
    }
}

/// Rectified-flow loss: `x_t = (1-t) x0 + t ε`, target `ε - x0`.
fn flow_loss(
    model: &Mmdit,
    x0: &Tensor,
    t: &Tensor,
    ctx: &Tensor,
    pooled: &Tensor,
) -> Result<Tensor> {
    let eps = x0.randn_like();
    let tb = t.view([-1, 1, 1, 1, 1]);
    let xt = x0 * (1.0 - &tb) + &eps * &tb;
    let v = model.forward(&xt, t, ctx, pooled)?;
    Ok((v - (eps - x0)).square().mean(Kind::Float))
}

/// Runs the training.
pub fn run(args: TrainSmokeArgs) -> Result<()> {
    let (cfg, typical) = match &args.config {
        Some(path) => (MmditConfig::from_toml_file(path)?, None),
        None => {
            let p = Preset::named(&args.preset)?;
            (p.config, Some(p.typical_input))
        }
    };
    if cfg.in_channels != 3 || cfg.out_channels != 3 {
        bail!("train-smoke renders RGB clips: the model needs in_channels = out_channels = 3 (got {} -> {})", cfg.in_channels, cfg.out_channels);
    }
    let clip = args.clip.unwrap_or(match typical {
        Some([_, t, h, w]) => [t as i64, h as i64, w as i64],
        None => [8, 32, 32],
    });
    if args.batch < 1 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    tch::manual_seed(args.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), &cfg)?;
    let captions = Captions::new(&cfg);
    let mut opt = nn::AdamW::default().build(&vs, args.lr)?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    info!(
        params,
        ?clip,
        batch = args.batch,
        steps = args.steps,
        threads = tch::get_num_threads(),
        "train-smoke: rectified flow on moving blobs"
    );

    // A fixed validation set: clips, noise and times drawn once.
    let (val_x, val_ids) = render(16, clip);
    let (val_ctx, val_pooled) = captions.embed(&val_ids);
    let val_t = Tensor::linspace(0.05, 0.95, 16, (Kind::Float, Device::Cpu));
    let val_seed = args.seed + 1;
    let validate = || -> Result<f64> {
        tch::manual_seed(val_seed);
        Ok(
            tch::no_grad(|| flow_loss(&model, &val_x, &val_t, &val_ctx, &val_pooled))?
                .double_value(&[]),
        )
    };
    let val_start = validate()?;
    tch::manual_seed(args.seed + 2);

    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    let mut losses = Vec::with_capacity(args.steps);
    let start = Instant::now();
    for step in 0..args.steps {
        let (x0, ids) = render(args.batch, clip);
        let (ctx, pooled) = captions.embed(&ids);
        let t = Tensor::rand([args.batch], (Kind::Float, Device::Cpu));
        let loss = flow_loss(&model, &x0, &t, &ctx, &pooled)?;
        opt.backward_step(&loss);
        let l = loss.double_value(&[]);
        if !l.is_finite() {
            bail!("loss became {l} at step {step}");
        }
        losses.push(l);
        let rate = (step + 1) as f64 * args.batch as f64 / start.elapsed().as_secs_f64();
        bar.set_message(format!("loss {l:.4}  {rate:.1} clips/s"));
        bar.inc(1);
    }
    bar.finish();
    let seconds = start.elapsed().as_secs_f64();
    let val_end = validate()?;
    let k = (args.steps / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    println!(
        "train loss    first {k} steps {:.4} -> last {k} steps {:.4}",
        mean(&losses[..k]),
        mean(&losses[args.steps - k..])
    );
    println!("val loss      {val_start:.4} -> {val_end:.4} (16 fixed clips, noise and times)");
    println!(
        "speed         {:.2} steps/s, {:.1} clips/s ({} threads)",
        args.steps as f64 / seconds,
        args.steps as f64 * args.batch as f64 / seconds,
        tch::get_num_threads()
    );

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights = args.out.join("model.safetensors");
    save_safetensors(&vs, &weights)?;
    std::fs::write(args.out.join("model.toml"), cfg.to_toml_string())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("checkpoint    {}", weights.display());
    Ok(())
}
