//! Parity with diffusers' SD3Transformer2DModel on fixtures made by `cargo xtask fixtures`
//! (scripts/make_sd3_fixtures.py): same weights, same inputs, fp32, max abs difference ≤ 1e-5.

use std::path::PathBuf;

use apt_mmdit::embeddings::sincos_2d_table;
use apt_mmdit::parity::{read_fixture, run_parity};
use apt_mmdit::Mmdit;
use tch::{nn, Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check(variant: &str) {
    let dir = fixtures().join(variant);
    let report = run_parity(&dir, &fixtures().join(format!("{variant}.io.safetensors"))).unwrap();
    eprintln!(
        "{variant}: max abs diff {:e} (output scale {})",
        report.max_abs_diff, report.max_abs_expected
    );
    assert_eq!(report.shape, vec![2, 4, 12, 20]);
    assert!(
        report.max_abs_expected > 0.5,
        "fixture output is not trivial"
    );
    assert!(
        report.max_abs_diff <= 1e-5,
        "{variant}: max abs diff {} > 1e-5",
        report.max_abs_diff
    );
}

#[test]
fn plain_sd3_matches_diffusers() {
    check("sd3-plain");
}

#[test]
fn qk_rmsnorm_sd3_matches_diffusers() {
    check("sd3-qknorm");
}

#[test]
fn our_sincos_table_equals_the_saved_buffer() {
    let dir = fixtures().join("sd3-plain");
    let saved: Vec<(String, Tensor)> =
        Tensor::read_safetensors(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let buffer = &saved
        .iter()
        .find(|(k, _)| k == "pos_embed.pos_embed")
        .unwrap()
        .1;
    // sample_size 16, patch 2 → base 8; pos_embed_max_size 12; width 32.
    let ours = sincos_2d_table(32, 12, 8).unsqueeze(0);
    let diff = (ours - buffer).abs().max().double_value(&[]);
    assert!(diff < 1e-7, "table differs by {diff}");
}

#[test]
fn video_api_on_unit_time_matches_the_diffusers_call() {
    // `forward` takes t in [0, 1] and a T axis; on T = 1 it is the diffusers call with t·1000.
    let dir = fixtures().join("sd3-qknorm");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::from_diffusers_dir(&vs, &dir).unwrap();
    let io = read_fixture(&fixtures().join("sd3-qknorm.io.safetensors")).unwrap();
    let t = Tensor::from_slice(&[0.25f32, 0.9375]); // exact in binary, so t·1000 is exact too
    let (x, ctx, pooled) = (
        &io["hidden_states"],
        &io["encoder_hidden_states"],
        &io["pooled_projections"],
    );
    let a = model
        .forward(&x.unsqueeze(2), &t, ctx, pooled)
        .unwrap()
        .squeeze_dim(2);
    let b = model
        .forward_diffusers(x, ctx, pooled, &(&t * 1000.0))
        .unwrap();
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0);
}
