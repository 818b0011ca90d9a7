//! The run directory and bad input, probed from outside with the `apt` binary: a refused run
//! changes nothing, one process per run directory, `--resume` refuses what would change the
//! run, exported weights are checked, impossible shapes and batches are clear errors before
//! any allocation, skipped files are reported, and Ctrl-C stops pair generation and the
//! evaluation.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_refused_run_changes_nothing_in_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 4);
    let before = snapshot(&out);
    // A second start without --resume: the stage holds checkpoints.
    let o = apt(&smoke_args(&out, &cache, &["--stage", "pretrain"]));
    assert_clear_error(&o, &["already holds checkpoints", "--resume"]);
    // A different model on the same run (the old failure: config.toml was overwritten and
    // `apt sample` / `apt eval` then used it): refused, naming the key.
    let o = apt(&smoke_args(
        &out,
        &cache,
        &["--stage", "distill", "--set", "model.config.depth=3"],
    ));
    assert_clear_error(&o, &["model.config.depth", "was 2, now 3"]);
    // (`.lock` names the process using the directory, not the run: each claim rewrites it.)
    let runs_files = |s: Vec<(std::path::PathBuf, Vec<u8>)>| -> Vec<_> {
        s.into_iter()
            .filter(|(p, _)| !p.ends_with(".lock"))
            .collect()
    };
    assert!(
        runs_files(snapshot(&out)) == runs_files(before),
        "a refused run changed the directory"
    );
    // A refused run on a new directory leaves no directory behind.
    let fresh = dir.path().join("fresh");
    let o = apt(&smoke_args(&fresh, &cache, &["--stage", "distill"]));
    assert_clear_error(
        &o,
        &["teacher.safetensors", "run the `pretrain` stage first"],
    );
    assert!(!fresh.exists());
    let o = apt(&smoke_args(
        &dir.path().join("never"),
        &cache,
        &["--set", "pretrain.train.batch_size=100000000"],
    ));
    assert_clear_error(&o, &["pretrain.train.batch_size", "more than this machine"]);
    assert!(!dir.path().join("never").exists());
}

#[test]
fn one_process_per_run_directory_and_a_killed_holder_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let long = [
        "--stage",
        "pretrain",
        "--set",
        "pretrain.train.steps=100000",
        "--set",
        "pretrain.train.checkpoint_every=5",
    ];
    let mut holder = apt_command(&smoke_args(&out, &cache, &long))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        &out.join("pretrain/checkpoints/step-000000005.json"),
        &mut holder,
    );
    let started = Instant::now();
    let mut resume = long.to_vec();
    resume.push("--resume");
    let o = apt(&smoke_args(&out, &cache, &resume));
    assert_clear_error(
        &o,
        &[
            "in use by another apt process",
            &format!("pid {}", holder.id()),
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "it waited");
    let o = apt(&strings(&["eval", "--run", &out.to_string_lossy()]));
    assert_clear_error(&o, &[&format!("pid {}", holder.id())]);
    holder.kill().unwrap(); // SIGKILL: the kernel drops the lock
    holder.wait().unwrap();
    let mut finish = resume.clone();
    finish[3] = "pretrain.train.steps=6";
    let o = apt(&smoke_args(&out, &cache, &finish));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn resume_refuses_what_would_change_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 4);
    for (set, key) in [
        (
            "pretrain.train.optimizer={ kind = \"rmsprop\", lr = 1e-3 }",
            "pretrain.train.optimizer.kind",
        ),
        (
            "model.config.positions={ kind = \"rope3d\", theta = 500.0 }",
            "model.config.positions.theta",
        ),
        ("data.shapes.height=32", "data.shapes.height"),
        ("seed=1", "`seed`"),
    ] {
        let o = apt(&smoke_args(
            &out,
            &cache,
            &["--stage", "pretrain", "--resume", "--set", set],
        ));
        assert_clear_error(&o, &[key, "different config"]);
    }
    // Training longer is a resume, not a new run.
    let o = apt(&smoke_args(
        &out,
        &cache,
        &[
            "--stage",
            "pretrain",
            "--resume",
            "--set",
            "pretrain.train.steps=6",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Nothing to resume is an error, not a silent start from step 0.
    let o = apt(&smoke_args(
        &out,
        &cache,
        &["--stage", "distill", "--resume"],
    ));
    assert_clear_error(&o, &["no checkpoint to resume from"]);
}

#[test]
fn exported_weights_are_checked_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let teacher = out.join("pretrain/teacher.safetensors");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("pretrain/teacher.json")).unwrap())
            .unwrap();
    assert_eq!(record["weights_fnv64"].as_str().unwrap(), fnv(&teacher));
    let sample = |extra: &[&str]| {
        let mut args = strings(&[
            "sample",
            "--checkpoint",
            &out.join("pretrain").to_string_lossy(),
            "--prompt",
            "a red circle moves right",
            "--out",
            &dir.path().join("x.gif").to_string_lossy(),
        ]);
        args.extend(strings(extra));
        apt(&args)
    };
    assert!(sample(&[]).status.success());
    // A changed byte: the record does not match.
    let good = std::fs::read(&teacher).unwrap();
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0x40;
    std::fs::write(&teacher, &flipped).unwrap();
    assert_clear_error(&sample(&[]), &["teacher.safetensors", "integrity record"]);
    // NaN weights with a matching record (a diverged export): still refused, naming a tensor.
    std::fs::write(&teacher, &good).unwrap();
    let mut tensors = tch::Tensor::read_safetensors(&teacher).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors[0].1 = tensors[0].1.full_like(f64::NAN);
    tch::Tensor::write_safetensors(&tensors, &teacher).unwrap();
    let mut record = record.clone();
    record["weights_fnv64"] = fnv(&teacher).into();
    record["weights_bytes"] = std::fs::metadata(&teacher).unwrap().len().into();
    std::fs::write(out.join("pretrain/teacher.json"), record.to_string()).unwrap();
    assert_clear_error(&sample(&[]), &[&tensors[0].0, "NaN or Inf"]);
    let o = apt(&smoke_args(&out, &cache, &["--stage", "distill"]));
    assert_clear_error(&o, &["NaN or Inf"]);
}

#[test]
fn impossible_shapes_and_batches_are_clear_errors_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let sample = |shape: &str| {
        apt(&strings(&[
            "sample",
            "--checkpoint",
            &out.join("pretrain").to_string_lossy(),
            "--prompt",
            "x",
            &format!("--shape={shape}"),
            "--out",
            &dir.path().join("x.gif").to_string_lossy(),
        ]))
    };
    for (shape, needle) in [
        ("3,4,16,-16", "four positive integers"),
        ("-1,4,16,16", "four positive integers"),
        ("3,4,16", "four positive integers"),
        ("4,4,16,16", "3 channels"),
        ("3,5,16,16", "multiples of the patch size"),
        ("3,4000000000,16,16", "more than this machine"),
        ("3,4,4000000000,4000000000", "far too large"),
    ] {
        let o = sample(shape);
        assert!(!o.status.success(), "{shape}: accepted");
        let err = text(&o.stderr);
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{shape}: {err}"
        );
    }
    let o = apt(&strings(&[
        "train",
        "--config",
        &config("smoke.toml"),
        "--dry-run",
        "--set",
        "apt.train.batch_size=10000000",
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan = text(&o.stdout);
    assert!(
        plan.contains("runs here    no: one apt step needs about"),
        "{plan}"
    );
}

#[test]
fn skipped_files_are_reported_once_each_and_counted() {
    let clips = apt_build::assets_dir()
        .expect("assets (cargo xtask setup)")
        .join("clips");
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for (i, file) in ["bikes.mp4", "cockatoo.mp4", "bikes.mp4", "cockatoo.mp4"]
        .iter()
        .enumerate()
    {
        std::fs::copy(clips.join(file), videos.join(format!("good{i}.mp4"))).unwrap();
        std::fs::write(videos.join(format!("good{i}.txt")), "a real clip").unwrap();
    }
    std::fs::write(videos.join("garbage.mp4"), b"not a video at all").unwrap();
    std::fs::write(videos.join("garbage.txt"), "a broken clip").unwrap();
    std::fs::write(videos.join("uncaptioned.mp4"), b"no caption file").unwrap();
    let train = |on_bad: &str| {
        let mut args = strings(&[
            "train",
            "--config",
            &config("real-videos.toml"),
            "--stage",
            "pretrain",
        ]);
        for set in [
            format!("data.path={:?}", videos.to_string_lossy()),
            format!("data.on_bad_sample={on_bad:?}"),
            format!("out={:?}", dir.path().join(on_bad).to_string_lossy()),
            "pretrain.train.steps=6".into(),
            "pretrain.train.batch_size=2".into(),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        apt(&args)
    };
    let o = train("skip");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    for bad in ["garbage.mp4", "uncaptioned.mp4"] {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("skipping a bad sample") && l.contains(bad))
            .collect();
        assert_eq!(lines.len(), 1, "{bad}: {err}");
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("skip/pretrain/report.json")).unwrap(),
    )
    .unwrap();
    let bad = report["bad_samples"].as_array().unwrap();
    assert_eq!(bad.len(), 2, "{report}");
    // A link loop is a bad file too, and in fail mode it stops the run naming it.
    let looped = videos.join("loop.mp4");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    std::fs::remove_file(videos.join("garbage.mp4")).unwrap();
    std::fs::remove_file(videos.join("uncaptioned.mp4")).unwrap();
    assert_clear_error(&train("fail"), &["loop.mp4"]);
}

#[test]
fn ctrl_c_stops_pair_generation_and_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let distill = [
        "--stage",
        "distill",
        "--set",
        "distill.pairs=8000",
        "--set",
        "distill.shard_size=8",
    ];
    let o = interrupted_pair_generation(&out, &cache, &distill);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let shards = std::fs::read_dir(out.join("distill/pairs"))
        .unwrap()
        .count();
    assert!(shards < 1000, "{shards} of 1000 shards: Ctrl-C waited");

    // The final evaluation: Ctrl-C stops it before anything is written.
    let full = dir.path().join("full");
    let mut child = apt_command(&smoke_args(
        &full,
        &cache,
        &["--set", "report.prompts=100000"],
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for_text(
        &full.join("log.txt"),
        "evaluating every generator",
        &mut child,
    );
    interrupt(&child);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(!full.join("report.md").exists() && !full.join("metrics.json").exists());
}
