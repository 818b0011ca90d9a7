//! `apt data …`: inspect files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use apt_data::shapes::{Colour, Shape, ShapesConfig, Split};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Subcommands of `apt data`.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Frames (counted by decoding), size, fps, codec and container of a video or image.
    Inspect {
        /// The file.
        path: PathBuf,
    },
    /// Write the moving-shapes benchmark as mp4 files with caption sidecars.
    Shapes(ShapesArgs),
    /// Encode a folder or manifest of videos with a VAE into latents + a manifest the loader
    /// reads (resumable; bad clips skipped with the file named).
    Encode(crate::encode_cmd::EncodeArgs),
}

/// Which split to write.
#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    HeldOut,
    All,
}

/// Arguments of `apt data shapes`.
#[derive(Args)]
pub struct ShapesArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Number of clips.
    #[arg(long)]
    count: usize,
    /// Frames per clip.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Frame height.
    #[arg(long, default_value_t = 32)]
    height: u32,
    /// Frame width.
    #[arg(long, default_value_t = 32)]
    width: u32,
    /// Frames per second of the written videos.
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
    /// Data-set seed (clip i is a pure function of seed and i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many shapes per clip.
    #[arg(long, default_value_t = 1)]
    max_shapes: usize,
    /// Speeds in pixels per frame, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    speeds: Vec<f64>,
    /// Held-out colour-shape pairs, e.g. `yellow-triangle,red-square`.
    #[arg(long, value_delimiter = ',')]
    hold_out: Vec<String>,
    /// Which split to write.
    #[arg(long, value_enum, default_value = "all")]
    split: SplitArg,
}

/// Dispatches `apt data …`.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect { path } => inspect(&path),
        DataCommand::Shapes(args) => shapes(args),
        DataCommand::Encode(args) => crate::encode_cmd::run(args),
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let info = apt_data::probe(path)?;
    println!("file          {}", path.display());
    println!("container     {}", info.container);
    println!("codec         {}", info.codec);
    println!("size          {}x{}", info.width, info.height);
    println!("fps           {:.3}", info.fps);
    let header = info
        .header_frames
        .map(|n| format!(" (header says {n})"))
        .unwrap_or_default();
    println!("frames        {}{header}", info.frames);
    println!("duration      {:.3} s", info.frames as f64 / info.fps);
    if info.corrupt_packets > 0 {
        println!("corrupt       {} packets skipped", info.corrupt_packets);
    }
    Ok(())
}

fn parse_pair(text: &str) -> Result<(Colour, Shape)> {
    let found = Colour::ALL
        .iter()
        .flat_map(|c| Shape::ALL.iter().map(move |s| (*c, *s)))
        .find(|(c, s)| format!("{}-{}", c.name(), s.name()) == text);
    match found {
        Some(pair) => Ok(pair),
        None => bail!(
            "--hold-out: {text:?} is not colour-shape (colours: {}; shapes: {})",
            Colour::ALL.map(|c| c.name()).join(", "),
            Shape::ALL.map(|s| s.name()).join(", ")
        ),
    }
}

/// One clip is rendered as f32 `[3, T, H, W]` and converted to RGB24 frames for the encoder:
/// refuse sizes this machine cannot hold before anything is allocated or written.
fn check_clip_memory(args: &ShapesArgs) -> Result<()> {
    let values = [3, args.frames as u64, args.height as u64, args.width as u64]
        .iter()
        .try_fold(1u64, |acc, &v| acc.checked_mul(v));
    // f32 tensor, its RGB24 copy, and the encoder's frames: about three f32 clips.
    let needed = values.and_then(|v| v.checked_mul(3 * 4));
    let available = apt_pipeline::memory::machine_memory();
    match (needed, available) {
        (None, _) => anyhow::bail!(
            "--frames {} --height {} --width {}: far too large to render",
            args.frames,
            args.height,
            args.width
        ),
        (Some(n), Some(a)) if n > a => anyhow::bail!(
            "--frames {} --height {} --width {}: one clip needs about {} of memory, more than \
             this machine's {}",
            args.frames,
            args.height,
            args.width,
            apt_pipeline::memory::human_bytes(n),
            apt_pipeline::memory::human_bytes(a)
        ),
        _ => Ok(()),
    }
}

fn shapes(args: ShapesArgs) -> Result<()> {
    check_clip_memory(&args)?;
    let config = ShapesConfig {
        max_shapes: args.max_shapes,
        speeds: args.speeds,
        held_out: args
            .hold_out
            .iter()
            .map(|p| parse_pair(p))
            .collect::<Result<_>>()?,
        ..ShapesConfig::new(args.frames, args.height, args.width)
    };
    config.validate()?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::HeldOut => Split::HeldOut,
        SplitArg::All => Split::All,
    };
    let bar = ProgressBar::new(args.count as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} clips [{elapsed_precise} < {eta_precise}]",
        )
        .expect("template"),
    );
    let files = apt_data::shapes::write_folder(
        &config,
        args.seed,
        split,
        args.count,
        args.fps,
        &args.out,
        |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    println!(
        "wrote {} clips ({}x{}, {} frames) with captions to {}",
        files.len(),
        args.width,
        args.height,
        args.frames,
        args.out.display()
    );
    Ok(())
}
