//! Loading is strict (a missing, unexpected or mis-shaped key is an error naming it), saving
//! round-trips, and bad inputs are refused with the expected shape.

use std::path::{Path, PathBuf};

use apt_vae::{ImageVae, ImageVaeConfig, VaeError, WanVae, WanVaeConfig};
use tch::{nn, Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies a fixture directory, editing its tensors with `edit`.
fn edited_copy(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let mut tensors =
        Tensor::read_safetensors(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dst.join("diffusion_pytorch_model.safetensors")).unwrap();
}

fn load_err(dir: &Path) -> String {
    let vs = nn::VarStore::new(Device::Cpu);
    WanVae::from_diffusers_dir(&vs, dir)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("wan");
    let missing = tmp.path().join("missing");
    edited_copy(&src, &missing, |t| {
        t.retain(|(k, _)| k != "decoder.norm_out.gamma")
    });
    let err = load_err(&missing);
    assert!(
        err.contains("missing keys") && err.contains("decoder.norm_out.gamma"),
        "{err}"
    );

    let extra = tmp.path().join("extra");
    edited_copy(&src, &extra, |t| {
        t.push((
            "encoder.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = load_err(&extra);
    assert!(
        err.contains("unexpected keys") && err.contains("encoder.extra.weight"),
        "{err}"
    );

    let shaped = tmp.path().join("shaped");
    edited_copy(&src, &shaped, |t| {
        for (k, v) in t.iter_mut() {
            if k == "quant_conv.bias" {
                *v = Tensor::zeros([3], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_err(&shaped);
    assert!(
        err.contains("wrong shapes") && err.contains("quant_conv.bias"),
        "{err}"
    );
}

#[test]
fn the_wrong_class_is_refused() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = ImageVae::from_diffusers_dir(&vs, fixtures().join("wan"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AutoencoderKLWan") && err.contains("AutoencoderKL\""),
        "{err}"
    );
}

#[test]
fn saved_directories_load_back_identically() {
    tch::manual_seed(5);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WanVaeConfig {
        base_dim: 8,
        z_dim: 4,
        latents_mean: vec![0.0; 4],
        latents_std: vec![1.0; 4],
        ..WanVaeConfig::small()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = WanVae::new(&vs.root(), &cfg).unwrap();
    vae.save_diffusers_dir(&vs, tmp.path().join("wan")).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = WanVae::from_diffusers_dir(&vs2, tmp.path().join("wan")).unwrap();
    assert_eq!(back.config(), &cfg);
    let x = Tensor::rand([1, 3, 5, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let (a, b) = tch::no_grad(|| (vae.encode(&x).unwrap().mean, back.encode(&x).unwrap().mean));
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0);

    let icfg = ImageVaeConfig {
        block_out_channels: vec![8, 8],
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        norm_num_groups: 4,
        layers_per_block: 1,
        latent_channels: 4,
        ..ImageVaeConfig::sd3()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let img = ImageVae::new(&vs.root(), &icfg).unwrap();
    img.save_diffusers_dir(&vs, tmp.path().join("kl")).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = ImageVae::from_diffusers_dir(&vs2, tmp.path().join("kl")).unwrap();
    assert_eq!(back.config(), &icfg);
}

#[test]
fn bad_inputs_name_the_expected_shape() {
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = WanVae::from_diffusers_dir(&vs, fixtures().join("wan")).unwrap();
    let four_frames = Tensor::zeros([1, 3, 4, 16, 16], (Kind::Float, Device::Cpu));
    let err = vae.encode(&four_frames).unwrap_err();
    assert!(
        matches!(
            err,
            VaeError::Input {
                argument: "video",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1 + 4k"), "{err}");
    let odd = Tensor::zeros([1, 3, 5, 12, 16], (Kind::Float, Device::Cpu));
    assert!(vae.encode(&odd).is_err());
    let wrong_channels = Tensor::zeros([1, 5, 2, 2, 2], (Kind::Float, Device::Cpu));
    assert!(vae.decode(&wrong_channels).is_err());
}

/// The trainable path: gradients reach every encoder and decoder weight through the chunked,
/// cached passes.
#[test]
fn gradients_reach_every_weight() {
    tch::manual_seed(6);
    let cfg = WanVaeConfig {
        base_dim: 8,
        z_dim: 4,
        latents_mean: vec![0.0; 4],
        latents_std: vec![1.0; 4],
        ..WanVaeConfig::small()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = WanVae::new(&vs.root(), &cfg).unwrap();
    let x = Tensor::rand([1, 3, 5, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let post = vae.encode(&x).unwrap();
    let y = vae.decode_unclamped(&post.sample()).unwrap();
    ((y - &x).square().mean(Kind::Float) + post.kl().mean(Kind::Float) * 1e-3).backward();
    for (name, v) in vs.variables() {
        let g = v.grad();
        assert!(g.defined(), "{name}: no gradient");
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0 || name.ends_with("bias"),
            "{name}: zero gradient"
        );
    }
}

/// After the temporal identity init, a video of one repeated frame reconstructs every frame
/// exactly like that frame alone (the temporal layers are the identity in time).
#[test]
fn temporal_identity_init_makes_a_still_video_decode_like_its_frame() {
    tch::manual_seed(7);
    let cfg = WanVaeConfig {
        base_dim: 8,
        z_dim: 4,
        latents_mean: vec![0.0; 4],
        latents_std: vec![1.0; 4],
        ..WanVaeConfig::small()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = WanVae::new(&vs.root(), &cfg).unwrap();
    apt_vae::init_temporal_identity(&vs);
    let frame = Tensor::rand([1, 3, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let still = frame.repeat([1, 1, 5, 1, 1]);
    let (one, five) = tch::no_grad(|| {
        let one = vae.decode(&vae.encode(&frame).unwrap().mean).unwrap();
        let five = vae.decode(&vae.encode(&still).unwrap().mean).unwrap();
        (one, five)
    });
    assert_eq!(five.size(), vec![1, 3, 5, 8, 8]);
    let diff = (five - one.repeat([1, 1, 5, 1, 1]))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}
