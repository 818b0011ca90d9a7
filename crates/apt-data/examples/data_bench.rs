//! Benchmarks run by `cargo xtask bench data` (release build):
//!
//! * decode: our in-process decoder vs the `ffmpeg` tool decoding the same clip to raw rgb24
//!   at the same output size (`-vf scale=W:H:flags=bilinear -f rawvideo -pix_fmt rgb24 -`),
//!   interleaved round by round; prints both frames/s and the ratio;
//! * clips: clips/s of random clips cut from each file (8 frames at 8 fps, 32×32, as
//!   configs/real-videos.toml) decoding every file from its first frame to its last (the path
//!   of an unindexed file) vs from its index (seek to the key frame before the clip, stop after
//!   it);
//! * loader: clips/s of the batch loader with 1 and 2 workers on a folder, after one epoch has
//!   indexed every file.
//!
//! `cargo run --release -p apt-data --example data_bench -- decode CLIP W H ROUNDS`
//! `cargo run --release -p apt-data --example data_bench -- clips N FILE…`
//! `cargo run --release -p apt-data --example data_bench -- loader DIR FRAMES SIZE BATCHES [FPS]`

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use apt_data::{
    decode, index, load_clip, load_clip_seeking, ClipSpec, Dataset, FrameSize, FrameStep, Loader,
    LoaderConfig, OnBadSample,
};
use rand::SeedableRng;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ffmpeg_frames(clip: &str, w: u32, h: u32) -> (usize, f64) {
    let start = Instant::now();
    let mut child = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-i",
            clip,
            "-vf",
            &format!("scale={w}:{h}:flags=bilinear"),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ffmpeg");
    let mut out = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0usize;
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        bytes += n;
    }
    assert!(child.wait().expect("ffmpeg").success());
    (
        bytes / (w as usize * h as usize * 3),
        start.elapsed().as_secs_f64(),
    )
}

fn ours_frames(clip: &str, w: u32, h: u32) -> (usize, f64) {
    let start = Instant::now();
    let frames = decode(
        clip,
        FrameSize::Exact {
            width: w,
            height: h,
        },
    )
    .expect("decode");
    (frames.len(), start.elapsed().as_secs_f64())
}

fn bench_decode(clip: &str, w: u32, h: u32, rounds: usize) {
    let (mut tool, mut ours) = (vec![], vec![]);
    let mut counts = (0, 0);
    for round in 0..rounds {
        // Alternate which side goes first, so drift in machine load hits both alike.
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (n, s) = ffmpeg_frames(clip, w, h);
                counts.0 = n;
                tool.push(n as f64 / s);
            } else {
                let (n, s) = ours_frames(clip, w, h);
                counts.1 = n;
                ours.push(n as f64 / s);
            }
        }
    }
    assert_eq!(counts.0, counts.1, "both decode every frame");
    let (t, o) = (median(tool), median(ours));
    println!("decode {clip} -> {w}x{h} rgb24, {} frames: ffmpeg tool {t:.0} frames/s, apt-data {o:.0} frames/s, ratio {:.2}x", counts.1, o / t);
}

/// The clips of configs/real-videos.toml: 8 frames at 8 fps, 32×32, random offset and crop.
fn real_videos_spec() -> ClipSpec {
    ClipSpec {
        step: FrameStep::Fps(8.0),
        ..ClipSpec::eval(8, 32, 32).random()
    }
}

fn bench_clips(n: usize, files: &[String]) {
    let spec = real_videos_spec();
    for file in files {
        let path = std::path::Path::new(file);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        // Index the file (one full decode plus the entry-point check), as a first load does.
        let start = Instant::now();
        let first = load_clip(path, &spec, &mut rng, None).expect("clip");
        index::store(path, &first.source, first.seek_index.as_ref());
        let index_s = start.elapsed().as_secs_f64();
        let entry = index::lookup(path).expect("indexed");
        let known = Some((entry.frames, entry.fps));
        let start = Instant::now();
        for _ in 0..n {
            load_clip(path, &spec, &mut rng, None).expect("clip");
        }
        let full = n as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..n {
            load_clip_seeking(path, &spec, &mut rng, known, entry.seek.as_ref()).expect("clip");
        }
        let indexed = n as f64 / start.elapsed().as_secs_f64();
        let entries = entry.seek.as_ref().map_or(0, |s| s.key_frames.len());
        println!(
            "clips {file} ({} frames, {entries} entry points; indexing {index_s:.2} s): \
             whole-file decode {full:.1} clips/s, indexed {indexed:.1} clips/s ({:.1}x)",
            entry.frames,
            indexed / full
        );
    }
}

fn bench_loader(dir: &str, frames: usize, size: u32, batches: usize, fps: Option<f64>) {
    let set = Dataset::open(dir, OnBadSample::Skip).expect("dataset");
    for workers in [1, 2] {
        let spec = ClipSpec {
            step: fps.map_or(FrameStep::Stride(1), FrameStep::Fps),
            ..ClipSpec::eval(frames, size, size).random()
        };
        let mut loader =
            Loader::new(set.clone(), LoaderConfig::new(4, workers, 0, spec)).expect("loader");
        // One epoch first: every file is indexed by then.
        for _ in 0..set.len().div_ceil(4) {
            loader.next_batch().expect("warm-up");
        }
        let start = Instant::now();
        for _ in 0..batches {
            loader.next_batch().expect("batch");
        }
        let rate = (batches * 4) as f64 / start.elapsed().as_secs_f64();
        let at = fps.map_or("consecutive frames".to_string(), |f| format!("{f} fps"));
        println!("loader {dir} ({} items, {frames}x{size}x{size} clips, {at}), {workers} worker(s): {rate:.1} clips/s", set.len());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args[i].parse::<usize>().expect("a number");
    match args.first().map(String::as_str) {
        Some("decode") => bench_decode(&args[1], num(2) as u32, num(3) as u32, num(4)),
        Some("loader") => bench_loader(
            &args[1],
            num(2),
            num(3) as u32,
            num(4),
            args.get(5).map(|f| f.parse().expect("fps")),
        ),
        Some("clips") => bench_clips(num(1), &args[2..]),
        _ => eprintln!(
            "usage: data_bench decode CLIP W H ROUNDS | clips N FILE… | loader DIR FRAMES SIZE BATCHES"
        ),
    }
}
