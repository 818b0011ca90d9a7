//! Round trips: write with our writers, decode with our decoder, compare.

use apt_data::shapes::{ShapesConfig, Split};
use apt_data::{decode, write_video, FrameSize};
use tch::{Kind, Tensor};

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).square().mean(Kind::Float).double_value(&[]) / 4.0; // [-1,1] → [0,1]
    10.0 * (1.0 / mse).log10()
}

fn decoded(path: &std::path::Path) -> (Tensor, apt_data::Frames) {
    let f = decode(path, FrameSize::Native).unwrap();
    let t = apt_data::clip::frames_to_tensor(
        &f.data,
        f.len(),
        f.height,
        f.width,
        (0, 0, f.height, f.width),
    );
    (t, f)
}

#[test]
fn mp4_gif_and_png_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let sample = ShapesConfig::new(8, 32, 48)
        .sample(0, 1, Split::All)
        .unwrap();
    for (name, min_psnr) in [
        ("a.mp4", 30.0),
        ("a.mov", 30.0),
        ("a.mkv", 30.0),
        ("a.gif", 25.0),
    ] {
        let path = dir.path().join(name);
        write_video(&path, &sample.video, 12.0).unwrap();
        let (video, frames) = decoded(&path);
        assert_eq!(frames.info.frames, 8, "{name}");
        assert_eq!(video.size(), sample.video.size(), "{name}");
        let p = psnr(&video, &sample.video);
        assert!(p > min_psnr, "{name}: PSNR {p:.1} dB");
        assert!(
            (frames.info.fps - 12.0).abs() < 0.6,
            "{name}: fps {}",
            frames.info.fps
        );
    }
    // PNG grid: exact up to 8-bit rounding, frames laid out in a row.
    let png = dir.path().join("grid.png");
    write_video(&png, &sample.video, 12.0).unwrap();
    let (grid, frames) = decoded(&png);
    assert_eq!((frames.width, frames.height), (8 * 48, 32));
    let third = grid.squeeze_dim(1).narrow(2, 2 * 48, 48);
    let diff = (third - sample.video.select(1, 2))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff <= 1.0 / 127.5 + 1e-6, "png error {diff}");
    // Only the finished files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn odd_sizes_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sample = ShapesConfig::new(3, 33, 41)
        .sample(0, 0, Split::All)
        .unwrap();
    let path = dir.path().join("odd.mp4");
    write_video(&path, &sample.video, 24.0).unwrap();
    let (video, _) = decoded(&path);
    assert_eq!(video.size(), vec![3, 3, 33, 41]);
    let err = write_video(dir.path().join("x.avi3"), &sample.video, 24.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.avi3") && err.contains("extension"), "{err}");
    let err = write_video(
        dir.path().join("x.mp4"),
        &Tensor::zeros([2, 3, 4, 4], (Kind::Float, tch::Device::Cpu)),
        24.0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("[3, T, H, W]"), "{err}");
}
