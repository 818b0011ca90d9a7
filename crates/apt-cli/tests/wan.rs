//! Wan 2.1 as the teacher: `configs/wan-tiny.toml` takes a random tiny diffusers Wan pipeline
//! (`assets/wan-tiny`, made by `scripts/make_wan_tiny.py`) through distillation → APT →
//! evaluation → `apt sample`, and a directory that is not a usable Wan pipeline is refused
//! with one clear error before anything is written.

mod common;

use std::path::Path;

use common::*;

fn wan_args(out: &Path, from: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["train", "--config", &config("wan-tiny.toml")]);
    for set in [
        format!("out={:?}", out.to_string_lossy()),
        format!("model.from={:?}", from.to_string_lossy()),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    args.extend(strings(extra));
    args
}

fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn pipeline() -> std::path::PathBuf {
    repo().join("assets/wan-tiny")
}

#[test]
fn a_tiny_wan_pipeline_is_distilled_post_trained_evaluated_and_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = apt(&wan_args(&out, &pipeline(), &[]));
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The teacher is the pipeline's transformer, exported as a Wan model.
    let model = std::fs::read_to_string(out.join("pretrain/model.toml")).unwrap();
    assert!(model.starts_with("family = \"wan\""), "{model}");
    let teacher = tensors(&out.join("pretrain/teacher.safetensors"));
    let source = tensors(&pipeline().join("transformer/diffusion_pytorch_model.safetensors"));
    assert_eq!(teacher.len(), source.len());
    for ((a, x), (b, y)) in teacher.iter().zip(&source) {
        assert_eq!(a, b);
        assert!(
            x.to_kind(tch::Kind::Float)
                .equal(&y.to_kind(tch::Kind::Float)),
            "{a}"
        );
    }
    // The pipeline's VAE and UMT5 were used: latents of 4 channels, UMT5 embeddings cached.
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("wan-tiny/vae"), "{config}");
    let cached = std::fs::read_dir(out.join("text-cache/umt5"))
        .unwrap()
        .count();
    assert!(cached > 1, "{cached} cached captions");
    // Distillation and APT trained the one-step generator away from the teacher.
    let generator = tensors(&out.join("apt/generator.safetensors"));
    let moved = generator
        .iter()
        .zip(&teacher)
        .any(|((_, g), (_, t))| !g.equal(t));
    assert!(moved, "the generator equals the teacher");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("APT one-step"), "{report}");

    // `apt sample` writes an mp4 through the Wan VAE: 5 frames of 32×32.
    let video = dir.path().join("red.mp4");
    let o = apt(&strings(&[
        "sample",
        "--checkpoint",
        &out.join("apt/generator.safetensors").to_string_lossy(),
        "--prompt",
        "a red circle moves right",
        "--out",
        &video.to_string_lossy(),
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let frames = apt_data::decode(&video, apt_data::FrameSize::Native).unwrap();
    assert_eq!(
        (frames.indices.len(), frames.width, frames.height),
        (5, 32, 32)
    );
}

/// bf16 with recomputation in every stage, and consistency distillation as G's init (the
/// teacher's CFG with Wan's negative prompt inside the consistency target).
#[test]
fn the_wan_run_trains_in_bf16_with_recomputation_and_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = apt(&wan_args(
        &out,
        &pipeline(),
        &[
            "--set",
            "precision=\"bf16\"",
            "--set",
            "distill.train.recompute=true",
            "--set",
            "apt.train.recompute=true",
            "--set",
            "report.prompts=4",
            "--set",
            "consistency={points=4, shift=3.0, cfg_scale=5.0, train={steps=4, batch_size=4, \
             optimizer={kind=\"adamw\", lr=1e-3}, checkpoint_every=2, recompute=true}}",
            "--set",
            "apt.generator_init=\"consistency\"",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.join("consistency/student.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("apt/metrics.jsonl")).unwrap();
    let last = metrics.lines().last().unwrap();
    assert!(last.contains("\"d_loss\""), "{last}");
    assert!(!last.contains("NaN") && !last.contains("null"), "{last}");
}

#[test]
fn a_directory_that_is_no_usable_wan_pipeline_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let refused = |from: &Path, needles: &[&str]| {
        let o = apt(&wan_args(&out, from, &[]));
        assert_clear_error(&o, needles);
        assert!(!out.exists(), "a refused run wrote {}", out.display());
    };
    // Not a pipeline at all; another pipeline's directory.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&empty, &["model.from", "model_index.json"]);
    let sd3 = dir.path().join("sd3");
    copy_dir(&pipeline(), &sd3);
    std::fs::write(
        sd3.join("model_index.json"),
        r#"{"_class_name": "StableDiffusion3Pipeline"}"#,
    )
    .unwrap();
    refused(
        &sd3,
        &["model.from", "StableDiffusion3Pipeline", "WanPipeline"],
    );

    // A shard the index names is missing.
    let sharded = dir.path().join("sharded");
    copy_dir(&pipeline(), &sharded);
    let t = sharded.join("transformer");
    std::fs::rename(
        t.join("diffusion_pytorch_model.safetensors"),
        t.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::write(
        t.join("diffusion_pytorch_model.safetensors.index.json"),
        r#"{"weight_map": {"proj_out.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "proj_out.bias": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    refused(&sharded, &["00002-of-00002", "missing"]);

    // A tokenizer larger than the encoder's vocabulary (another model's).
    let tokenizer = dir.path().join("tokenizer");
    copy_dir(&pipeline(), &tokenizer);
    let cfg = tokenizer.join("text_encoder/config.json");
    let json = std::fs::read_to_string(&cfg).unwrap();
    let vocab: serde_json::Value = serde_json::from_str(&json).unwrap();
    let n = vocab["vocab_size"].as_u64().unwrap();
    std::fs::write(
        &cfg,
        json.replace(&format!("\"vocab_size\": {n}"), "\"vocab_size\": 10"),
    )
    .unwrap();
    refused(&tokenizer, &["tokenizer.json", "vocabulary of 10"]);

    // A transformer whose weights do not have its config's shapes.
    let shapes = dir.path().join("shapes");
    copy_dir(&pipeline(), &shapes);
    let cfg = shapes.join("transformer/config.json");
    let json = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, json.replace("\"ffn_dim\": 32", "\"ffn_dim\": 48")).unwrap();
    refused(
        &shapes,
        &[
            "shapes/transformer",
            "blocks.0.ffn.net.0.proj.bias: file [32] vs model [48]",
        ],
    );
}

/// `[distill.lora]` and `[apt.lora]`: only the adapters train (every other weight of the
/// student and of G stays the teacher's / the student's), each stage writes the adapters in
/// diffusers' layout beside the merged export, and `apt sample --lora` on the base model
/// draws what the merged generator draws.
#[test]
fn lora_stages_train_only_the_adapters_and_export_them_beside_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = apt(&wan_args(
        &out,
        &pipeline(),
        &[
            "--set",
            "distill.lora={rank=4, targets=[\"to_q\", \"to_k\", \"to_v\", \"to_out.0\"]}",
            "--set",
            "apt.lora={rank=4, alpha=8.0, targets=[\"attn1.to_q\", \"attn1.to_v\", \"ffn.net.2\"]}",
            "--set",
            "report.prompts=4",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let targeted = |name: &str, targets: &[&str]| {
        targets
            .iter()
            .any(|t| name.ends_with(&format!("{t}.weight")))
    };
    let compare = |trained: &Path, start: &Path, targets: &[&str]| {
        let (a, b) = (tensors(trained), tensors(start));
        assert_eq!(
            a.len(),
            b.len(),
            "the export is a full model without adapters"
        );
        let mut changed = 0;
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            if targeted(name, targets) {
                changed += usize::from(!x.equal(y));
            } else {
                assert!(x.equal(y), "{name} changed although it is no LoRA target");
            }
        }
        assert!(changed > 0, "no targeted weight changed");
    };
    compare(
        &out.join("distill/student.safetensors"),
        &out.join("pretrain/teacher.safetensors"),
        &["to_q", "to_k", "to_v", "to_out.0"],
    );
    compare(
        &out.join("apt/generator-raw.safetensors"),
        &out.join("distill/student.safetensors"),
        &["attn1.to_q", "attn1.to_v", "ffn.net.2"],
    );
    // The adapters, diffusers' layout: 4 blocks × (2 attention + 1 FFN) layers × A and B.
    let adapters = tensors(&out.join("apt/lora.safetensors"));
    assert_eq!(adapters.len(), 4 * 3 * 2);
    assert!(adapters
        .iter()
        .all(|(k, _)| k.starts_with("transformer.blocks.") && k.contains(".lora_")));

    // Base + adapter draws what the merged generator draws.
    let sample = |checkpoint: &Path, lora: Option<&Path>, name: &str| {
        let video = dir.path().join(name);
        let mut args = strings(&[
            "sample",
            "--checkpoint",
            &checkpoint.to_string_lossy(),
            "--prompt",
            "a red circle moves right",
            "--out",
            &video.to_string_lossy(),
        ]);
        if let Some(l) = lora {
            args.extend(strings(&["--lora", &l.to_string_lossy()]));
        }
        let o = apt(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        apt_data::decode(&video, apt_data::FrameSize::Native)
            .unwrap()
            .data
    };
    let merged = sample(&out.join("apt/generator.safetensors"), None, "merged.mp4");
    let adapted = sample(
        &out.join("distill/student.safetensors"),
        Some(&out.join("apt/lora.safetensors")),
        "adapted.mp4",
    );
    let worst = merged
        .iter()
        .zip(&adapted)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 2, "decoded frames differ by up to {worst}/255");
}

/// A LoRA stage resumed from its checkpoint ends at the straight run's exact adapters.
#[test]
fn a_resumed_lora_stage_ends_where_the_straight_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let lora = "apt.lora={rank=4, targets=[\"to_q\", \"to_v\", \"ffn.net.2\"]}";
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    let o = apt(&wan_args(&straight, &pipeline(), &["--set", lora]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = apt(&wan_args(
        &resumed,
        &pipeline(),
        &["--set", lora, "--set", "apt.train.steps=3"],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = apt(&wan_args(
        &resumed,
        &pipeline(),
        &["--set", lora, "--stage", "apt", "--resume"],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for file in ["apt/lora.safetensors", "apt/generator-raw.safetensors"] {
        let (a, b) = (tensors(&straight.join(file)), tensors(&resumed.join(file)));
        for ((k, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{file}: {k} differs after resuming");
        }
    }
}

/// A run on captioned files (not the benchmark) is judged by the teacher-feature Fréchet
/// distance: a table with intervals and differences, GIFs real | teacher | students | APT, the
/// same numbers from `apt eval`; settings it cannot honour are refused before the run starts.
#[test]
fn a_run_on_captioned_files_is_judged_by_the_teachers_features() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    let o = apt(&strings(&[
        "data",
        "shapes",
        "--out",
        &clips.to_string_lossy(),
        "--count",
        "40",
        "--frames",
        "5",
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let files = format!(
        "data={{kind=\"files\", path={:?}, clip={{num_frames=5, step={{fps=8.0}}, height=32, \
         width=32, offset=\"random\", crop=\"random\"}}}}",
        clips.to_string_lossy()
    );
    let out = dir.path().join("run");
    let run = |extra: &[&str]| {
        let mut args = vec!["--set", files.as_str()];
        args.extend_from_slice(extra);
        apt(&wan_args(&out, &pipeline(), &args))
    };
    // Too few clips for the feature dimensions, more captions than clips: refused up front.
    let o = run(&["--set", "report.prompts=8", "--set", "report.feature_dim=8"]);
    assert_clear_error(&o, &["report.prompts", "feature dimensions"]);
    assert!(!out.exists());
    let o = run(&[
        "--set",
        "report.prompts=64",
        "--set",
        "report.feature_dim=8",
    ]);
    assert_clear_error(&o, &["report.prompts", "holds 40 clips"]);
    assert!(!out.exists());

    let fvd = |file: &str| {
        format!(
            "report.fvd_i3d={:?}",
            repo()
                .join("crates/apt-pipeline/tests/fixtures/fvd")
                .join(file)
                .to_string_lossy()
        )
    };
    let settings = |i3d: &str| {
        [
            "--set",
            "report.prompts=32",
            "--set",
            "report.feature_dim=8",
            "--set",
            i3d,
        ]
        .map(String::from)
    };
    let wrong = settings(&fvd("wrong_i3d.pt"));
    let o = run(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    assert_clear_error(&o, &["wrong_i3d.pt", "interface"]);
    assert!(!out.exists());

    // With an I3D-interface module (the fixture's stand-in for the real I3D file): FVD too.
    let good = settings(&fvd("fake_i3d.pt"));
    let o = run(&good.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let fd = &metrics["teacher_features"];
    let rows = fd["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{fd}");
    let floor = fd["floor"].as_f64().unwrap();
    for row in rows {
        let f = &row["frechet"];
        assert!(f["estimate"].as_f64().unwrap() > floor, "{row}");
        assert!(
            f["lo"].as_f64().unwrap() <= f["hi"].as_f64().unwrap(),
            "{row}"
        );
    }
    assert!(rows
        .iter()
        .any(|r| r["name"] == "APT one-step" && r["vs_reference"].is_object()));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Teacher-feature Fréchet distance"),
        "{report}"
    );
    assert!(report.contains("real | teacher"), "{report}");
    assert!(out.join("samples/prompt-0.gif").is_file());

    // `apt eval` recomputes the same numbers.
    let o = apt(&strings(&["eval", "--run", &out.to_string_lossy()]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(again["teacher_features"], metrics["teacher_features"]);
}
