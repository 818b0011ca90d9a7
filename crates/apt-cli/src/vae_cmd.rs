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
    /// Encode a video with a VAE and decode it back: writes the original and the
    /// reconstruction side by side and prints the PSNR (dB, peak-to-peak 2).
    Reconstruct {
        /// A diffusers `AutoencoderKLWan` directory.
        #[arg(long)]
        diffusers: PathBuf,
        /// A video or image file.
        #[arg(long)]
        input: PathBuf,
        /// Frames to take from the middle of the file (1 + 4k for Wan 2.1).
        #[arg(long, default_value_t = 17)]
        frames: usize,
        /// Height to resize (cover) and centre-crop to.
        #[arg(long, default_value_t = 256)]
        height: u32,
        /// Width to resize (cover) and centre-crop to.
        #[arg(long, default_value_t = 256)]
        width: u32,
        /// Output: .mp4, .gif or .png (frame grid).
        #[arg(long)]
        out: PathBuf,
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
        VaeCommand::Reconstruct {
            diffusers,
            input,
            frames,
            height,
            width,
            out,
        } => reconstruct(
            &diffusers,
            &input,
            [frames, height as usize, width as usize],
            &out,
        ),
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

fn reconstruct(dir: &Path, input: &Path, [frames, h, w]: [usize; 3], out: &Path) -> Result<()> {
    let spec = apt_data::ClipSpec::eval(frames, h as u32, w as u32);
    let clip = apt_data::load_clip(
        input,
        &spec,
        &mut rand::rngs::mock::StepRng::new(0, 1),
        None,
    )?;
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = WanVae::from_diffusers_dir(&vs, dir)?;
    let x = clip.video.unsqueeze(0);
    let start = Instant::now();
    let recon = tch::no_grad(|| -> apt_vae::Result<Tensor> { vae.decode(&vae.encode(&x)?.mean) })?;
    let seconds = start.elapsed().as_secs_f64();
    let mse = (&recon - &x).square().mean(Kind::Float).double_value(&[]);
    let psnr = 10.0 * (4.0 / mse.max(1e-12)).log10();
    let gap = Tensor::ones([3, frames as i64, h as i64, 2], (Kind::Float, Device::Cpu));
    let strip = Tensor::cat(&[x.get(0), gap, recon.get(0)], 3);
    apt_data::write_video(out, &strip, 8.0)?;
    println!(
        "input         {} ({frames} frames, {h}x{w})",
        input.display()
    );
    println!("vae           {}", dir.display());
    println!("encode+decode {:.1} ms", seconds * 1e3);
    println!(
        "written       {} (original | reconstruction)",
        out.display()
    );
    println!("psnr          {psnr:.2} dB");
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
