//! Parity with the seed article's own PyTorch classes (scripts/make_seed_gan_fixture.py).

use std::path::PathBuf;

use apt_gan::seed_gan::run_seed_parity;

#[test]
fn seed_gan_matches_the_seed_pytorch_code() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_gan.safetensors");
    let parity = run_seed_parity(&path).unwrap();
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
        run_seed_parity(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap_err();
    assert!(err.contains("Cargo.toml"), "{err}");
}
