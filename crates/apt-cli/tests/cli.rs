//! The `apt` binary end to end: real processes, real files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn apt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apt"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run apt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../apt-mmdit/tests/fixtures")
}

#[test]
fn doctor_reports_libtorch() {
    let o = apt(&["doctor"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(text.contains("libtorch      2.11.0"), "{text}");
    assert!(text.contains("bf16 cpu      works"), "{text}");
}

#[test]
fn model_info_sizes_the_8b_preset() {
    let o = apt(&["model", "info", "--preset", "seaweed-8b"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("parameters"))
        .expect("parameters line");
    let n: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((n / 8e9 - 1.0).abs() <= 0.05, "{line}");
    let o = apt(&[
        "model",
        "info",
        "--preset",
        "small",
        "--shape",
        "3,16,64,64",
        "--text-tokens",
        "10",
    ]);
    assert!(
        stdout(&o).contains("2048 visual + 10 text tokens"),
        "{}",
        stdout(&o)
    );
    // Wan 2.1's released sizes, counted as diffusers builds them.
    for (preset, count) in [("wan2.1-1.3b", "1418996800"), ("wan2.1-14b", "14288491584")] {
        let o = apt(&["model", "info", "--preset", preset]);
        assert!(o.status.success(), "{o:?}");
        assert!(
            stdout(&o).contains(&format!("parameters    {count} ")),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn user_mistakes_are_one_line_errors() {
    for (args, needle) in [
        (
            vec!["model", "info", "--preset", "huge"],
            "unknown model preset `huge`",
        ),
        (
            vec!["model", "info", "--preset", "small", "--shape", "3,5,32,32"],
            "T = 5",
        ),
        (
            vec!["model", "info", "--config", "/nonexistent/model.toml"],
            "/nonexistent/model.toml",
        ),
    ] {
        let o = apt(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

/// A parity command succeeded and its last line is `max abs difference: X` with X ≤ `bound`.
fn assert_parity_within(o: &Output, bound: f64) {
    assert!(o.status.success(), "{o:?}");
    let text = stdout(o);
    let last = text.lines().last().unwrap();
    let diff: f64 = last.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        last.starts_with("max abs difference") && diff <= bound,
        "{last}"
    );
}

#[test]
fn parity_prints_the_max_abs_difference_last() {
    // SD3 and Wan 2.1 directories alike: the model is picked by config.json's `_class_name`.
    for variant in ["sd3-plain", "sd3-qknorm", "wan/wan-test", "wan/wan-video"] {
        let dir = fixtures().join(variant);
        let fixture = fixtures().join(format!("{variant}.io.safetensors"));
        let o = apt(&[
            "model",
            "parity",
            "--diffusers",
            dir.to_str().unwrap(),
            "--fixture",
            fixture.to_str().unwrap(),
        ]);
        assert_parity_within(&o, 1e-5);
    }
    let o = apt(&[
        "model",
        "parity",
        "--diffusers",
        fixtures().join("sd3-plain").to_str().unwrap(),
        "--fixture",
        fixtures().join("sd3-plain/config.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"));
}

#[test]
fn vae_parity_prints_the_max_abs_difference_last() {
    let vae_fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../apt-vae/tests/fixtures");
    for (model, case) in [
        ("wan", "wan-video"),
        ("wan", "wan-image"),
        ("kl-sd3", "kl-sd3-image"),
    ] {
        let o = apt(&[
            "vae",
            "parity",
            "--diffusers",
            vae_fixtures.join(model).to_str().unwrap(),
            "--fixture",
            vae_fixtures
                .join(format!("{case}.safetensors"))
                .to_str()
                .unwrap(),
        ]);
        assert_parity_within(&o, 1e-4);
    }
    // A video fixture against the image VAE: a clear error naming the input.
    let o = apt(&[
        "vae",
        "parity",
        "--diffusers",
        vae_fixtures.join("kl-sd3").to_str().unwrap(),
        "--fixture",
        vae_fixtures.join("wan-video.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad input `image`"));
}

#[test]
fn data_inspect_reports_decoded_frames_or_an_exact_error() {
    let clip = apt_data::assets::clip("derived/bikes_theora.ogv").unwrap();
    let o = apt(&["data", "inspect", clip.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    for needle in [
        "codec         theora",
        "size          214x160",
        "frames        50",
        "fps           25.000",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.mp4");
    let bytes = std::fs::read(apt_data::assets::clip("bikes.mp4").unwrap()).unwrap();
    std::fs::write(&cut, &bytes[..20_000]).unwrap();
    let o = apt(&["data", "inspect", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("error: ")
            && last.contains("cut.mp4")
            && last.contains("not a readable video"),
        "{err}"
    );
}

#[test]
fn text_embed_writes_context_and_pooled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e.safetensors");
    let o = apt(&[
        "text",
        "embed",
        "--caption",
        "a red circle moves left",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let t: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&out)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(t["context"].size(), vec![7, 384]);
    assert_eq!(t["pooled"].size(), vec![384]);
    let mean = t["context"].mean_dim(0, false, tch::Kind::Float);
    assert!((mean - &t["pooled"]).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn sample_writes_a_video_and_times_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("run/apt");
    std::fs::create_dir_all(&stage).unwrap();
    let cfg = apt_mmdit::MmditConfig::from_toml_str(
        "in_channels = 3\nout_channels = 3\npatch_size = [1, 4, 4]\ndepth = 1\nnum_heads = 2\nhead_dim = 8\ncontext_dim = 384\npooled_dim = 384\n[positions]\nkind = \"rope3d\"\n",
    )
    .unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _m = apt_mmdit::Mmdit::new(vs.root(), &cfg).unwrap();
    apt_mmdit::save_safetensors(&vs, stage.join("generator.safetensors")).unwrap();
    std::fs::write(stage.join("model.toml"), cfg.to_toml_string()).unwrap();
    let out = dir.path().join("clip.gif");
    let o = apt(&[
        "sample",
        "--checkpoint",
        stage.to_str().unwrap(),
        "--prompt",
        "a red circle moves left",
        "--shape",
        "3,2,16,16",
        "--text-tokens",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    for part in ["text ", "generator ", "write ", "video "] {
        assert!(text.contains(part), "{part}: {text}");
    }
    let frames = apt_data::decode(&out, apt_data::FrameSize::Native).unwrap();
    assert_eq!((frames.len(), frames.width, frames.height), (2, 16, 16));
    let o = apt(&[
        "sample",
        "--checkpoint",
        dir.path().to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("generator.safetensors"));
}

#[test]
fn text_parity_prints_the_max_abs_difference_last() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../apt-data/tests/fixtures");
    let minilm = apt_data::assets::minilm_dir().unwrap();
    for (dir, fixture) in [
        (
            data.join("umt5/text_encoder"),
            data.join("umt5/umt5.io.safetensors"),
        ),
        (minilm, data.join("minilm.io.safetensors")),
    ] {
        let o = apt(&[
            "text",
            "parity",
            "--transformers",
            dir.to_str().unwrap(),
            "--fixture",
            fixture.to_str().unwrap(),
        ]);
        assert_parity_within(&o, 1e-5);
    }
}
