//! Parity with the source article's own PyTorch classes (scripts/make_seed_gan_fixture.py).

use std::path::PathBuf;

use apt_gan::wgan_gp::gan::{parity_name, run_parity};

#[test]
fn seed_gan_matches_the_seed_pytorch_code() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_gan.safetensors");
    let parity = run_parity(&path).unwrap();
    let c = parity.config;
    assert_eq!(
        (c.in_size, c.cond_in, c.latent_s, c.width, c.layers),
        (24, 6, 8, 32, 2)
    );
    eprintln!(
        "seed GAN max abs diff (generated, critic loss, gradient penalty, critic gradients): {:e}",
        parity.max_abs_diff
    );
    assert!(parity.max_abs_diff <= 1e-6, "{}", parity.max_abs_diff);
    let err =
        run_parity(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap_err();
    assert!(err.contains("Cargo.toml"), "{err}");
}

#[test]
fn parity_files_with_the_modules_own_state_dict_keys_are_read() {
    // PyTorch writes the article's modules' weights as `gen.0.weight`, …, `dis.0.weight` (the layers
    // live in `self.gen` / `self.dis`); the committed fixture prefixed them once more.
    assert_eq!(parity_name("gen.gen.0.weight"), "gen.0.weight");
    assert_eq!(parity_name("gen.0.weight"), "gen.0.weight");
    assert_eq!(parity_name("grad.dis.dis.2.bias"), "grad.dis.2.bias");
    assert_eq!(parity_name("grad.dis.2.bias"), "grad.dis.2.bias");
    assert_eq!(parity_name("noise"), "noise");
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_gan.safetensors");
    let as_pytorch_writes: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&fixture)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (parity_name(&k), v))
        .collect();
    assert!(as_pytorch_writes.iter().any(|(k, _)| k == "gen.0.weight"));
    assert!(as_pytorch_writes
        .iter()
        .any(|(k, _)| k == "grad.dis.0.weight"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state-dict-keys.safetensors");
    tch::Tensor::write_safetensors(&as_pytorch_writes, &path).unwrap();
    let parity = run_parity(&path).unwrap();
    assert!(parity.max_abs_diff <= 1e-6, "{}", parity.max_abs_diff);
    assert_eq!(parity.config, run_parity(&fixture).unwrap().config);
}
