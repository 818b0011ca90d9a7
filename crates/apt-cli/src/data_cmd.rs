//! `apt data …`: inspect files.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

/// Subcommands of `apt data`.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Frames (counted by decoding), size, fps, codec and container of a video or image.
    Inspect {
        /// The file.
        path: PathBuf,
    },
}

/// Dispatches `apt data …`.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect { path } => inspect(&path),
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
