//! Decoding real clips in every supported container/codec, checked against `ffprobe`.

mod common;

use std::path::Path;
use std::process::Command;

use apt_data::{assets, decode, probe, FrameSize};

/// `(frames counted by decoding, width, height)` according to ffprobe.
fn ffprobe(path: &Path) -> (usize, u32, u32) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.trim().split(',').collect();
    (
        f[2].parse().unwrap(),
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
    )
}

use common::CLIPS;

#[test]
fn frame_counts_and_sizes_match_ffprobe() {
    for name in CLIPS {
        let path = assets::clip(name).unwrap();
        let info = probe(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (frames, w, h) = ffprobe(&path);
        assert_eq!(info.frames, frames, "{name}: {info:?}");
        assert_eq!((info.width, info.height), (w, h), "{name}: {info:?}");
        assert_eq!(info.corrupt_packets, 0, "{name}");
    }
}

#[test]
fn codecs_and_containers_are_reported() {
    let cases = [
        ("cockatoo.mp4", "h264", "mp4"),
        ("derived/bikes_vp9.webm", "vp9", "webm"),
        ("derived/bikes_vp8.mkv", "vp8", "matroska"),
        ("derived/bikes_cinepak.avi", "cinepak", "avi"),
        ("derived/bikes_theora.ogv", "theora", "ogg"),
        ("newtonscradle.gif", "gif", "gif"),
    ];
    for (name, codec, container) in cases {
        let info = probe(assets::clip(name).unwrap()).unwrap();
        assert_eq!(info.codec, codec, "{name}");
        assert!(
            info.container.contains(container),
            "{name}: {}",
            info.container
        );
    }
    let bikes = probe(assets::clip("bikes.mp4").unwrap()).unwrap();
    assert!((bikes.fps - 25.0).abs() < 1e-9);
}

#[test]
fn decoding_converts_every_frame_to_rgb_at_the_requested_size() {
    let path = assets::clip("cockatoo.mp4").unwrap(); // H.264 4:4:4
    let native = decode(&path, FrameSize::Native).unwrap();
    assert_eq!(
        (native.width, native.height, native.len()),
        (1280, 720, 280)
    );
    assert_eq!(native.data.len(), 280 * 1280 * 720 * 3);
    let small = decode(
        &path,
        FrameSize::Cover {
            width: 64,
            height: 64,
        },
    )
    .unwrap();
    assert_eq!((small.width, small.height), (114, 64));
    // The downscaled frame's mean colour matches the native frame's.
    let mean = |bytes: &[u8]| bytes.iter().map(|&b| b as f64).sum::<f64>() / bytes.len() as f64;
    assert!((mean(native.frame(100)) - mean(small.frame(100))).abs() < 2.0);
    let exact = decode(
        assets::clip("derived/bikes_theora.ogv").unwrap(),
        FrameSize::Exact {
            width: 50,
            height: 30,
        },
    )
    .unwrap();
    assert_eq!(
        (exact.width, exact.height, exact.data.len()),
        (50, 30, exact.len() * 50 * 30 * 3)
    );
}
