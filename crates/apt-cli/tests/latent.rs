//! The pipeline in a VAE's latent space through the `apt` binary, on `configs/latent-demo.toml`
//! cut to seconds: the VAE stage exports a diffusers directory with measured latent statistics,
//! every later stage trains on normalised latents, the report scores decoded videos,
//! `apt sample` decodes, and `apt data encode` writes latents a `kind = "latents"` run trains on.

mod common;

use std::path::Path;

use common::*;

/// The latent demo with every count cut down (and a 2-block model).
fn tiny_latent_args(out: &Path, cache: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["train", "--config", &config("latent-demo.toml")]);
    for set in [
        format!("out={:?}", out.to_string_lossy()),
        format!("text.cache={:?}", cache.to_string_lossy()),
        "threads=2".into(),
        "model.config.depth=2".into(),
        "vae.train.steps=4".into(),
        "vae.image_steps=2".into(),
        "vae.train.batch_size=2".into(),
        "vae.stats_clips=4".into(),
        "vae.val_clips=4".into(),
        "pretrain.val_clips=2".into(),
        "pretrain.train.steps=3".into(),
        "pretrain.train.batch_size=4".into(),
        "distill.pairs=8".into(),
        "distill.teacher.steps=2".into(),
        "distill.train.steps=2".into(),
        "distill.train.batch_size=4".into(),
        "apt.train.steps=2".into(),
        "apt.train.batch_size=2".into(),
        "apt.train.checkpoint_every=2".into(),
        "apt.train.preview_every=2".into(),
        "report.prompts=4".into(),
        "report.teacher_prompts=2".into(),
        "report.teacher.steps=2".into(),
        "report.bootstrap=10".into(),
        "report.gifs=1".into(),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    args.extend(strings(extra));
    args
}

#[test]
fn latent_pipeline_trains_a_vae_decodes_samples_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = apt(&tiny_latent_args(&out, &dir.path().join("cache"), &[]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.join("report.md").is_file());

    // The VAE stage's export is a diffusers directory carrying the measured statistics.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let vae = apt_vae::WanVae::from_diffusers_dir(&vs, out.join("vae")).unwrap();
    assert!(vae
        .config()
        .latents_std
        .iter()
        .all(|s| *s > 0.0 && *s != 1.0));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vae/report.json")).unwrap())
            .unwrap();
    assert!(report["psnr"].as_f64().unwrap().is_finite());
    assert_eq!(report["latent_shape"], serde_json::json!([8, 2, 8, 8]));

    // Teacher, student and generator take [8, 2, 8, 8] latents; the samples are decoded.
    let model = std::fs::read_to_string(out.join("apt/model.toml")).unwrap();
    assert!(model.contains("in_channels = 8"), "{model}");
    let video = dir.path().join("sample.png");
    let o = apt(&strings(&[
        "sample",
        "--checkpoint",
        out.join("apt").to_str().unwrap(),
        "--prompt",
        "a red circle moving right",
        "--out",
        video.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("decode"), "{}", text(&o.stdout));
    let frames = apt_data::probe(&video).unwrap();
    assert_eq!((frames.width, frames.height), (5 * 32, 32), "{frames:?}");

    // `apt data encode` on written clips (one of them broken), resumable, then a pre-training
    // run on the stored latents with the same VAE.
    let clips = dir.path().join("clips");
    let o = apt(&strings(&[
        "data",
        "shapes",
        "--out",
        clips.to_str().unwrap(),
        "--count",
        "3",
        "--frames",
        "5",
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::write(clips.join("clip_00001.mp4"), b"not a video").unwrap();
    let encoded = dir.path().join("encoded");
    let encode = strings(&[
        "data",
        "encode",
        "--vae",
        out.join("vae").to_str().unwrap(),
        "--data",
        clips.to_str().unwrap(),
        "--out",
        encoded.to_str().unwrap(),
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
    ]);
    let o = apt(&encode);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("encoded 2 clips"),
        "{}",
        text(&o.stdout)
    );
    let skipped = std::fs::read_to_string(encoded.join("skipped.jsonl")).unwrap();
    assert!(skipped.contains("clip_00001.mp4"), "{skipped}");
    let again = apt(&encode);
    assert!(
        text(&again.stdout).contains("2 kept from an earlier run"),
        "{}",
        text(&again.stdout)
    );
    let z = tch::Tensor::read_safetensors(encoded.join("latents/000000.safetensors")).unwrap();
    assert_eq!(z[0].1.size(), vec![8, 2, 8, 8]);

    let from_latents = dir.path().join("from-latents");
    // Pre-training on the stored latents, in the latent space of the VAE in `vae`.
    let pretrain_on_latents = |vae: &Path, extra: &[&str]| {
        let vae = format!("vae.from={:?}", vae.to_string_lossy());
        let data = format!(
            "data={{kind=\"latents\", path={:?}, shape=[8, 2, 8, 8]}}",
            encoded.join("manifest.jsonl").to_string_lossy()
        );
        let mut args = vec!["--stage", "pretrain", "--set", &vae, "--set", &data];
        // Two clips were encoded.
        args.extend([
            "--set",
            "pretrain.val_clips=0",
            "--set",
            "pretrain.train.batch_size=2",
        ]);
        args.extend(extra);
        apt(&tiny_latent_args(
            &from_latents,
            &dir.path().join("cache"),
            &args,
        ))
    };
    let o = pretrain_on_latents(&out.join("vae"), &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(from_latents.join("pretrain/teacher.safetensors").is_file());
    // The teacher trained in that VAE's latent space: another `vae.from` on this run is
    // refused, though an imported VAE leaves no state of its own.
    let other = dir.path().join("other-vae");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(out.join("vae")).unwrap().flatten() {
        if f.path().is_file() {
            std::fs::copy(f.path(), other.join(f.file_name())).unwrap();
        }
    }
    let o = pretrain_on_latents(&other, &["--resume"]);
    assert_clear_error(&o, &["vae.from", "different config"]);
}
