//! `cargo xtask bench data`: decode throughput against the `ffmpeg` tool, loader clips/s (moving
//! shapes and real clips), random-clip access (whole-file decode vs indexed), and the clips/s a
//! pre-training update of configs/real-videos.toml consumes, for comparison.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{build_release, release_exe, seconds_per_step};
use crate::{repo_root, run, setup, Failure};

/// The real clips (from the test assets) the loader and random-clip benches read.
const REAL_CLIPS: [&str; 4] = [
    "bikes.mp4",
    "carphone_pristine.mp4",
    "cockatoo.mp4",
    "realshort.mp4",
];

/// Entry point for `cargo xtask bench data`.
pub(super) fn bench() -> Result<(), Failure> {
    setup::setup(false)?;
    build_release(
        &["-p", "apt-data", "--example", "data_bench", "-p", "apt-cli"],
        "building the data benchmark and the apt binary (release)",
    )?;
    let exe = release_exe("examples/data_bench");
    let apt = release_exe("apt");
    let clips = apt_build::assets_dir()
        .expect("setup resolved it")
        .join("clips");
    let work = repo_root().join("target/bench-data");
    let _ = std::fs::remove_dir_all(&work);
    let shapes = work.join("shapes");
    run(
        Command::new(&apt)
            .args([
                "data", "shapes", "--count", "64", "--frames", "16", "--height", "64", "--width",
                "64", "--speeds", "1,2", "--out",
            ])
            .arg(&shapes),
        "writing 64 moving-shapes clips",
    )?;
    let real = work.join("real");
    std::fs::create_dir_all(&real).map_err(|e| Failure::new(e.to_string()))?;
    for name in REAL_CLIPS {
        std::fs::copy(clips.join(name), real.join(name))
            .map_err(|e| Failure::new(format!("{name}: {e}")))?;
        std::fs::write(real.join(name).with_extension("txt"), "a real clip")
            .map_err(|e| Failure::new(e.to_string()))?;
    }
    let decode_cases = [
        ("bikes.mp4", "128", "64"),
        ("cockatoo.mp4", "256", "144"),
        ("cockatoo.mp4", "1280", "720"),
    ];
    for (clip, w, h) in decode_cases {
        let path = clips.join(clip);
        run(
            Command::new(&exe)
                .arg("decode")
                .arg(&path)
                .args([w, h, "5"]),
            &format!("decode {clip} at {w}x{h}"),
        )?;
    }
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&shapes)
            .args(["8", "32", "24"]),
        "loader on moving shapes",
    )?;
    let reals: Vec<PathBuf> = REAL_CLIPS.iter().map(|n| real.join(n)).collect();
    run(
        Command::new(&exe).args(["clips", "20"]).args(&reals),
        "random clips: whole-file decode vs indexed (seek + stop)",
    )?;
    // A 2 s and a 60 s 720p clip (key frame every 2 s, as encoders default to): an 8-frame clip
    // from either should cost about the same once indexed.
    let mut long = Vec::new();
    for seconds in ["2", "60"] {
        let out = work.join(format!("bikes-720p-{seconds}s.mp4"));
        run(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-stream_loop", "-1", "-i"])
                .arg(clips.join("bikes.mp4"))
                .args([
                    "-t",
                    seconds,
                    "-an",
                    "-vf",
                    "scale=1280:720",
                    "-c:v",
                    "libx264",
                ])
                .args(["-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
                .arg(&out),
            &format!("encoding a {seconds} s 720p clip"),
        )?;
        long.push(out);
    }
    run(
        Command::new(&exe).args(["clips", "10"]).args(&long),
        "8-frame clips from a 2 s and a 60 s 720p file",
    )?;
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&real)
            .args(["8", "64", "12"]),
        "loader on real clips (8 consecutive frames, 64x64: the issue-15 baseline's setting)",
    )?;
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&real)
            .args(["8", "32", "12", "8"]),
        "loader on real clips (configs/real-videos.toml's clips)",
    )?;
    training_consumption(&apt, &work)
}

/// Clips/s one pre-training update of configs/real-videos.toml consumes (the `small` preset,
/// batch 8 of 8×32×32 clips), timed on rendered shapes of that size so no loader is involved.
fn training_consumption(apt: &Path, work: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(repo_root().join("configs/real-videos.toml"))
        .map_err(|e| Failure::new(format!("configs/real-videos.toml: {e}")))?;
    let (head, rest) = text
        .split_once("[data]")
        .ok_or_else(|| Failure::new("configs/real-videos.toml has no [data]"))?;
    let tail = &rest[rest
        .find("[text]")
        .ok_or_else(|| Failure::new("no [text]"))?..];
    let config = work.join("consumption.toml");
    let shapes =
        "[data]\nkind = \"shapes\"\n[data.shapes]\nframes = 8\nheight = 32\nwidth = 32\n\n";
    std::fs::write(&config, format!("{head}{shapes}{tail}"))
        .map_err(|e| Failure::new(e.to_string()))?;
    let out = work.join("consumption");
    let _ = std::fs::remove_dir_all(&out);
    run(
        Command::new(apt)
            .args(["train", "--stage", "pretrain", "--config"])
            .arg(&config)
            .args(["--set", &format!("out={:?}", out.display().to_string())])
            .args(["--set", "pretrain.train.steps=12"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        "timing pre-training updates of the real-videos config (small preset, batch 8)",
    )?;
    let s = seconds_per_step(&out.join("pretrain/metrics.jsonl"))?;
    println!(
        "training consumption (configs/real-videos.toml, small preset, batch 8, 2 threads): {s:.3} s/update = {:.1} clips/s",
        8.0 / s
    );
    Ok(())
}
