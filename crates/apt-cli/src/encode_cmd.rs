//! `apt data encode`: a folder or manifest of videos → VAE latents + a manifest the loader
//! reads (`{"latents": …, "caption": …}` lines). Resumable (finished latents are kept and
//! skipped), bad clips skipped with the file named, progress with an ETA.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use apt_data::{ClipSpec, Dataset, Media, OnBadSample, Skipped};
use apt_mmdit::weights::write_atomically;
use apt_vae::WanVae;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn, Device, Tensor};

/// Arguments of `apt data encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// A diffusers `AutoencoderKLWan` directory (Wan 2.1's `vae/`, or a run's `vae/`).
    #[arg(long)]
    vae: PathBuf,
    /// A folder of videos with caption sidecars, or a JSONL manifest of `path` entries.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: `latents/NNNNNN.safetensors`, `manifest.jsonl`, `encode.json`,
    /// `skipped.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Frames per clip, from the middle of each file (1 + 4k for Wan 2.1).
    #[arg(long, default_value_t = 17)]
    frames: usize,
    /// Clip height (resize to cover, centre crop).
    #[arg(long, default_value_t = 256)]
    height: u32,
    /// Clip width.
    #[arg(long, default_value_t = 256)]
    width: u32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The record of an encoding (`encode.json`): what produced the latents.
#[derive(serde::Serialize)]
struct EncodeRecord<'a> {
    vae: &'a Path,
    data: &'a Path,
    frames: usize,
    height: u32,
    width: u32,
    latent_shape: [i64; 4],
    encoded: usize,
    skipped: usize,
    normalised: bool,
}

/// Encodes every clip (see the module docs).
pub fn run(args: EncodeArgs) -> Result<()> {
    let device = apt_pipeline::config::parse_device(&args.device)?;
    let vs = nn::VarStore::new(device);
    let vae = WanVae::from_diffusers_dir(&vs, &args.vae)?;
    let cfg = vae.config().clone();
    let latent_shape = apt_pipeline::latent::latent_shape_of(
        &cfg,
        [3, args.frames as i64, args.height as i64, args.width as i64],
    )
    .map_err(|e| anyhow::anyhow!("--frames/--height/--width: {e}"))?;
    let set = Dataset::open(&args.data, OnBadSample::Skip)?;
    let latents_dir = args.out.join("latents");
    std::fs::create_dir_all(&latents_dir)
        .with_context(|| format!("cannot create {}", latents_dir.display()))?;
    let spec = ClipSpec::eval(args.frames, args.height, args.width);
    let mut skipped: Vec<Skipped> = set.skipped.clone();
    let mut lines = Vec::new();
    let bar = ProgressBar::new(set.items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} clips [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("template"),
    );
    let mut resumed = 0;
    for (i, item) in set.items.iter().enumerate() {
        let name = format!("{i:06}.safetensors");
        let target = latents_dir.join(&name);
        let line = |caption: &str, embedding: &Option<PathBuf>| {
            let mut v =
                serde_json::json!({ "latents": format!("latents/{name}"), "caption": caption });
            if let Some(e) = embedding {
                v["embedding"] = serde_json::json!(e);
            }
            v.to_string()
        };
        let Media::Video(path) = &item.media else {
            skipped.push(Skipped {
                what: format!("{:?}", item.media),
                reason: "already latents".into(),
            });
            bar.inc(1);
            continue;
        };
        if target.is_file() {
            resumed += 1;
            lines.push(line(&item.caption, &item.embedding));
            bar.inc(1);
            continue;
        }
        let encoded = encode_one(&vae, path, &spec, device);
        match encoded {
            Ok(z) => {
                write_atomically(&target, |tmp| {
                    Tensor::write_safetensors(&[("latents", &z)], tmp)
                        .map_err(apt_mmdit::MmditError::from)
                })?;
                lines.push(line(&item.caption, &item.embedding));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), reason = %e, "skipping a bad clip");
                skipped.push(Skipped {
                    what: path.display().to_string(),
                    reason: format!("{e:#}"),
                });
            }
        }
        bar.set_message(format!("{} skipped", skipped.len()));
        bar.inc(1);
    }
    bar.finish();
    let manifest = args.out.join("manifest.jsonl");
    write_atomically(&manifest, |tmp| {
        std::fs::write(tmp, lines.join("\n") + "\n").map_err(|source| apt_mmdit::MmditError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    let mut file = std::fs::File::create(args.out.join("skipped.jsonl"))?;
    for s in &skipped {
        writeln!(file, "{}", serde_json::to_string(s)?)?;
    }
    let record = EncodeRecord {
        vae: &args.vae,
        data: &args.data,
        frames: args.frames,
        height: args.height,
        width: args.width,
        latent_shape,
        encoded: lines.len(),
        skipped: skipped.len(),
        normalised: false,
    };
    std::fs::write(
        args.out.join("encode.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    println!(
        "encoded {} clips ({} kept from an earlier run) to {} as {:?} latents (unnormalised posterior means); {} skipped (skipped.jsonl)",
        lines.len(),
        resumed,
        manifest.display(),
        latent_shape,
        skipped.len()
    );
    if lines.is_empty() {
        bail!("no clip could be encoded");
    }
    Ok(())
}

fn encode_one(vae: &WanVae, path: &Path, spec: &ClipSpec, device: Device) -> Result<Tensor> {
    let clip = apt_data::load_clip(path, spec, &mut rand::rngs::mock::StepRng::new(0, 1), None)?;
    let x = clip.video.unsqueeze(0).to_device(device);
    let z = tch::no_grad(|| vae.encode(&x))?.mean;
    Ok(z.get(0).to_device(Device::Cpu).contiguous())
}
