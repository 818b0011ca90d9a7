//! `apt vae …`: diffusers parity of the video and image VAEs, and their encode/decode speed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use apt_vae::parity::run_parity;
use apt_vae::weights::{class_of, IMAGE_CLASS, WAN_CLASS};
use apt_vae::{ImageVae, WanVae};
use clap::Subcommand;
use tch::{nn, Device, Kind, Tensor};

/// Subcommands of `apt vae`.
#[derive(Subcommand)]
pub enum VaeCommand {
    /// Compare our VAE with diffusers' (AutoencoderKLWan or AutoencoderKL) on a recorded input;
    /// the last line is the max abs difference over encoding and decoding.
    Parity {
        /// A diffusers `save_pretrained` directory (config.json + safetensors).
        #[arg(long)]
        diffusers: PathBuf,
        /// safetensors with `sample` (the input, [B, 3, T, H, W] or [B, 3, H, W] in [-1, 1]),
        /// `latent_mean` (the encoder's posterior mean) and `decoded` (the decoder's output for
        /// it); optionally `tile_sample_min` and `tile_sample_stride` ([h, w]) for tiled decoding.
        #[arg(long)]
        fixture: PathBuf,
    },
    /// Encode and decode throughput (frames/s) of a VAE directory on random input, fp32, no
    /// gradients: one JSON line per direction (what `cargo xtask bench vae` compares).
    Speed {
        /// A diffusers `save_pretrained` directory.
        #[arg(long)]
        diffusers: PathBuf,
        /// Input shape B,T,H,W (T is ignored by the image VAE).
        #[arg(long, value_delimiter = ',', default_value = "1,17,64,64")]
        shape: Vec<i64>,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// Dispatches `apt vae …`.
pub fn run(command: VaeCommand) -> Result<()> {
    match command {
        VaeCommand::Parity { diffusers, fixture } => parity(&diffusers, &fixture),
        VaeCommand::Speed {
            diffusers,
            shape,
            repeats,
        } => speed(&diffusers, &shape, repeats),
    }
}

fn parity(dir: &Path, fixture: &Path) -> Result<()> {
    let report = run_parity(dir, fixture)?;
    println!(
        "model         {} ({}, {} parameters)",
        dir.display(),
        report.class,
        report.parameters
    );
    println!(
        "fixture       {} -> latent {:?}, decoded {:?}{}",
        fixture.display(),
        report.latent_shape,
        report.decoded_shape,
        if report.tiled { " (tiled)" } else { "" }
    );
    println!(
        "encode        max abs difference {:e}",
        report.encode_max_abs_diff
    );
    println!(
        "decode        max abs difference {:e}",
        report.decode_max_abs_diff
    );
    println!("max abs difference: {:e}", report.max_abs_diff());
    Ok(())
}

/// Median seconds of `repeats` runs of `f` after one warm-up.
fn time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn speed(dir: &Path, shape: &[i64], repeats: usize) -> Result<()> {
    let [b, t, h, w] = shape[..] else {
        bail!("--shape: expected B,T,H,W (four integers), got {shape:?}");
    };
    let class = class_of(dir)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _guard = tch::no_grad_guard();
    tch::manual_seed(0);
    let (encode_s, decode_s, frames) = match class.as_str() {
        WAN_CLASS => {
            let vae = WanVae::from_diffusers_dir(&vs, dir)?;
            let x = Tensor::rand([b, 3, t, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let z = vae.encode(&x)?.mean;
            let enc = time(repeats, || vae.encode(&x).map(|_| ()).map_err(Into::into))?;
            let dec = time(repeats, || vae.decode(&z).map(|_| ()).map_err(Into::into))?;
            (enc, dec, b * t)
        }
        IMAGE_CLASS => {
            let vae = ImageVae::from_diffusers_dir(&vs, dir)?;
            let x = Tensor::rand([b, 3, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let z = vae.encode(&x)?.mean;
            let enc = time(repeats, || vae.encode(&x).map(|_| ()).map_err(Into::into))?;
            let dec = time(repeats, || vae.decode(&z).map(|_| ()).map_err(Into::into))?;
            (enc, dec, b)
        }
        other => bail!("{}: `_class_name` {other:?} is not a VAE", dir.display()),
    };
    for (direction, s) in [("encode", encode_s), ("decode", decode_s)] {
        println!(
            "{}",
            serde_json::json!({
                "impl": "apt-rs", "class": class, "direction": direction,
                "shape": shape, "seconds": s, "frames_per_s": frames as f64 / s,
                "threads": tch::get_num_threads(),
            })
        );
    }
    Ok(())
}
