//! Parity with diffusers' AutoencoderKLWan and AutoencoderKL on fixtures made by
//! `cargo xtask fixtures` (scripts/make_vae_fixtures.py): same weights, same inputs, fp32,
//! encode and decode max abs difference ≤ 1e-4.

use std::path::PathBuf;

use apt_vae::parity::run_parity;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check(model: &str, case: &str, latent: &[i64], decoded: &[i64]) {
    let report = run_parity(
        &fixtures().join(model),
        &fixtures().join(format!("{case}.safetensors")),
    )
    .unwrap();
    eprintln!("{case}: {report:?}");
    assert_eq!(report.latent_shape, latent);
    assert_eq!(report.decoded_shape, decoded);
    assert!(
        report.max_abs_diff() <= 1e-4,
        "{case}: encode {:e}, decode {:e} > 1e-4",
        report.encode_max_abs_diff,
        report.decode_max_abs_diff
    );
}

#[test]
fn wan_video_1_plus_4k_frames_non_square_matches_diffusers() {
    check("wan", "wan-video", &[2, 4, 3, 3, 5], &[2, 3, 9, 24, 40]);
}

#[test]
fn wan_single_frame_matches_diffusers() {
    check("wan", "wan-image", &[1, 4, 1, 2, 2], &[1, 3, 1, 16, 16]);
}

#[test]
fn wan_tiled_decoding_matches_diffusers() {
    let report = run_parity(
        &fixtures().join("wan"),
        &fixtures().join("wan-tiled.safetensors"),
    )
    .unwrap();
    assert!(report.tiled);
    assert_eq!(report.decoded_shape, vec![1, 3, 5, 48, 64]);
    assert!(report.max_abs_diff() <= 1e-4, "{report:?}");
}

#[test]
fn sd3_image_vae_matches_diffusers() {
    check("kl-sd3", "kl-sd3-image", &[2, 16, 3, 5], &[2, 3, 24, 40]);
}

#[test]
fn image_vae_with_quant_convs_matches_diffusers() {
    check(
        "kl-quant",
        "kl-quant-image",
        &[2, 16, 3, 5],
        &[2, 3, 24, 40],
    );
}
