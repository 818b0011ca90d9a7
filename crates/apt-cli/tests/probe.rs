//! The defects a probe of about 250 bad inputs found, each checked from outside with the `apt`
//! binary: checks run before anything is written (devices, name patterns, imported teachers,
//! data sets, world sizes), a refused new run leaves nothing on disk, the config of record
//! never says what was not trained, ranks started differently refuse at once, sampling stops
//! on Ctrl-C and refuses a non-finite video or another text length, temporary files of dead
//! processes are removed, and an interrupted pair generation resumes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A device no machine has (a CPU-only one has none; a GPU node rarely 64).
const NO_SUCH_DEVICE: &str = "cuda:63";

/// The run's files without `.lock` (which names the process using the directory).
fn run_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".lock"))
        .collect()
}

fn sample(checkpoint: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = strings(&[
        "sample",
        "--checkpoint",
        &checkpoint.to_string_lossy(),
        "--prompt",
        "a red circle moves right",
        "--out",
        &out.to_string_lossy(),
    ]);
    args.extend(strings(extra));
    apt(&args)
}

/// Re-records `weights`' integrity record after its bytes changed (as a tool that rewrote the
/// file would), keeping the other fields.
fn rerecord(weights: &Path, stage: &str) {
    let record_path = weights.with_extension("json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    record["weights"] = weights.file_name().unwrap().to_string_lossy().into();
    record["weights_fnv64"] = fnv(weights).into();
    record["weights_bytes"] = std::fs::metadata(weights).unwrap().len().into();
    record["stage"] = stage.into();
    std::fs::write(record_path, record.to_string()).unwrap();
}

/// A copy of the run's teacher export in `to`, every tensor passed through `f`.
fn altered_teacher(run: &Path, to: &Path, f: impl Fn(&tch::Tensor) -> tch::Tensor) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for file in ["teacher.json", "model.toml"] {
        std::fs::copy(run.join("pretrain").join(file), to.join(file)).unwrap();
    }
    let tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(run.join("pretrain/teacher.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, f(&t)))
            .collect();
    let weights = to.join("teacher.safetensors");
    tch::Tensor::write_safetensors(&tensors, &weights).unwrap();
    rerecord(&weights, "pretrain");
    weights
}

/// Probe items 1, 2, 3, 9 and 10 on new run directories: every refusal is one clear error
/// within seconds, and nothing is left on disk.
#[test]
fn a_refused_new_run_is_refused_before_training_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let fresh = dir.path().join("fresh");
    let refused = |sets: &[&str], needles: &[&str]| {
        let mut extra = Vec::new();
        for s in sets {
            extra.extend(["--set", s]);
        }
        let started = Instant::now();
        let o = apt(&smoke_args(&fresh, &cache, &extra));
        assert_clear_error(&o, needles);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{sets:?}: refused only after {:?}",
            started.elapsed()
        );
        assert!(!fresh.exists(), "{sets:?} left {}", fresh.display());
    };
    // 1. A device this machine lacks: no panic in libtorch.
    refused(
        &[&format!("device={NO_SUCH_DEVICE}")],
        &["`device`", "cuda:63"],
    );
    // 2. A frozen-name pattern that names nothing, before pre-training and distillation.
    refused(
        &["apt.generator_frozen=[\"no_such_name\"]"],
        &["apt.generator_frozen", "no_such_name"],
    );
    // 3. A teacher to import that is not there; a files data set whose folder is not there.
    refused(
        &["pretrain.from=\"/no/such/teacher\""],
        &["pretrain.from", "/no/such/teacher"],
    );
    // (Without [distill]: its prompts, the files' captions, would be checked after the data.)
    let smoke = std::fs::read_to_string(config("smoke.toml")).unwrap();
    let (head, tail) = smoke.split_once("[distill]").unwrap();
    let files = dir.path().join("files.toml");
    std::fs::write(
        &files,
        format!("{head}{}", &tail[tail.find("[apt]").unwrap()..]),
    )
    .unwrap();
    let o = apt(&strings(&[
        "train",
        "--config",
        &files.to_string_lossy(),
        "--set",
        &format!("out={:?}", fresh.to_string_lossy()),
        "--set",
        "data={ kind = \"files\", path = \"/no/such/clips\", clip = { num_frames = 4, \
         step = { fps = 8.0 }, height = 16, width = 16, offset = \"random\", crop = \"random\" } }",
    ]));
    assert_clear_error(&o, &["data.path", "/no/such/clips"]);
    assert!(!fresh.exists());

    // 9. A frame size no machine holds: an error before any allocation, no directory.
    let shapes = dir.path().join("shapes");
    let o = apt(&strings(&[
        "data",
        "shapes",
        "--out",
        &shapes.to_string_lossy(),
        "--count",
        "2",
        "--height",
        "100000",
        "--width",
        "100000",
    ]));
    assert_clear_error(&o, &["--height 100000", "memory"]);
    assert!(!shapes.exists());

    // 10. The dry run refuses what the run refuses: a batch that does not split into the
    // ranks, and no ranks at all.
    let dry = |extra: &[&str]| {
        let mut args = strings(&["train", "--config", &config("smoke.toml"), "--dry-run"]);
        args.extend(strings(extra));
        apt(&args)
    };
    assert_clear_error(
        &dry(&["--world-size", "3"]),
        &["pretrain.train.batch_size", "8 does not split into 3"],
    );
    let o = dry(&["--world-size", "0"]);
    assert!(!o.status.success() && text(&o.stderr).contains("--world-size"));
    let o = dry(&["--world-size", "2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("4 (of 8)"), "{}", text(&o.stdout));
}

/// Probe items 1, 3, 4, 7, 8, 12 and 13 on a run whose teacher is trained.
#[test]
fn an_existing_run_is_checked_before_its_record_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let before = run_files(&out);

    // 1. Another device, a bad frozen-name pattern: refused, config.toml untouched; `apt
    // sample` and `apt eval` refuse the device too.
    for set in [
        format!("device={NO_SUCH_DEVICE}"),
        "apt.generator_frozen=[\"no_such_name\"]".to_string(),
    ] {
        let o = apt(&smoke_args(
            &out,
            &cache,
            &["--stage", "distill", "--set", &set],
        ));
        assert_clear_error(&o, &[]);
        assert!(run_files(&out) == before, "{set}: the run changed");
    }
    let clip = dir.path().join("x.gif");
    let o = sample(&out.join("pretrain"), &clip, &["--device", NO_SUCH_DEVICE]);
    assert_clear_error(&o, &["--device", "cuda:63", "--device cpu"]);
    let o = apt(&strings(&[
        "eval",
        "--run",
        &out.to_string_lossy(),
        "--device",
        NO_SUCH_DEVICE,
    ]));
    assert_clear_error(&o, &["cuda:63", "--device cpu"]);
    assert!(!clip.exists());

    // 3. A student's export, or another model's teacher, as the teacher to import.
    let student = altered_teacher(&out, &dir.path().join("student"), |t| t.shallow_clone());
    rerecord(&student, "distill");
    let import = |from: &Path, extra: &[&str]| {
        let fresh = dir.path().join("imported");
        let mut args = vec![
            "--set".to_string(),
            format!("pretrain.from={:?}", from.to_string_lossy()),
        ];
        args.extend(strings(extra));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = apt(&smoke_args(&fresh, &cache, &args));
        assert!(!fresh.exists(), "{}", text(&o.stderr));
        o
    };
    assert_clear_error(
        &import(&student, &[]),
        &["pretrain.from", "`distill` stage"],
    );
    assert_clear_error(
        &import(
            &out.join("pretrain"),
            &["--set", "model.config.head_dim=16"],
        ),
        &["pretrain.from", "differs"],
    );
    // A check only loading can make (NaN weights behind a matching record) fails once the
    // stage runs; the directory this command created goes with it.
    let nan = altered_teacher(&out, &dir.path().join("nan"), |t| t.full_like(f64::NAN));
    assert_clear_error(&import(&nan, &[]), &["NaN or Inf"]);

    // 12. `apt eval` on a run that has exported nothing.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(out.join("config.toml"), empty.join("config.toml")).unwrap();
    let o = apt(&strings(&["eval", "--run", &empty.to_string_lossy()]));
    assert_clear_error(&o, &["no exported model"]);
    assert!(!empty.join("report.md").exists());

    // 13. Another text length than the model was trained with (8 tokens).
    let o = sample(&out.join("pretrain"), &clip, &["--text-tokens", "16"]);
    assert_clear_error(&o, &["--text-tokens 16", "8 text tokens"]);
    assert!(!clip.exists());

    // 8. Finite but huge weights: the video itself is checked before it is written.
    let huge = altered_teacher(&out, &dir.path().join("huge"), |t| {
        t.sign() * 3e38 + t * 0.0
    });
    let o = sample(
        huge.parent().unwrap(),
        &clip,
        &["--text-tokens", "8", "--shape", "3,4,16,16"],
    );
    assert_clear_error(&o, &["NaN or Inf", "nothing written"]);
    assert!(!clip.exists());

    // 7. Temporary files of processes killed mid-write are removed by the next run; a live
    // writer's are kept.
    let dead = [
        out.join("pretrain/checkpoints/.step-000003.safetensors.tmp-99999999"),
        cache.join("0123456789abcdef.tmp-99999998"),
    ];
    let live = out.join(format!(
        "pretrain/.teacher.safetensors.tmp-{}",
        std::process::id()
    ));
    for f in dead.iter().chain([&live]) {
        std::fs::write(f, vec![0u8; 1 << 20]).unwrap();
    }

    // 4. Training longer on a finished stage that this run would skip: refused, with what to
    // do; the stage selected by name trains the extra steps, and the record follows.
    let o = apt(&smoke_args(
        &out,
        &cache,
        &["--resume", "--set", "pretrain.train.steps=3"],
    ));
    assert_clear_error(&o, &["pretrain.train.steps", "--stage pretrain --resume"]);
    let o = apt(&smoke_args(
        &out,
        &cache,
        &[
            "--stage",
            "pretrain",
            "--resume",
            "--set",
            "pretrain.train.steps=3",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let record = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("pretrain/teacher.json")).unwrap())
            .unwrap();
    assert!(record.contains("steps = 3"), "{record}");
    assert_eq!(export["step"], 3);
    for f in &dead {
        assert!(!f.exists(), "{} is still there", f.display());
    }
    assert!(live.exists(), "a live process's temporary file was removed");
}

/// Probe item 6: a long multi-step sampling stops on Ctrl-C within seconds (exit 130, nothing
/// written).
#[test]
fn sampling_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let clip = dir.path().join("long.gif");
    let mut child = apt_command(&strings(&[
        "sample",
        "--checkpoint",
        &out.join("pretrain").to_string_lossy(),
        "--prompt",
        "a red circle moves right",
        "--steps",
        "100000",
        "--cfg",
        "2",
        "--out",
        &clip.to_string_lossy(),
    ]))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Let it load and start sampling.
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "it ended early");
    interrupt(&child);
    let stopped = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "it did not stop"
    );
    assert!(!clip.exists());
}

/// Probe item 11: Ctrl-C while the teacher pairs are generated says to continue with
/// `--resume`, and `--resume` does (the pairs written so far are kept).
#[test]
fn an_interrupted_pair_generation_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    pretrained(&out, &cache, 2);
    let distill = [
        "--stage",
        "distill",
        "--set",
        "distill.pairs=400",
        "--set",
        "distill.shard_size=8",
        "--set",
        "distill.train.steps=2",
    ];
    let o = interrupted_pair_generation(&out, &cache, &distill);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("--resume"), "{}", text(&o.stdout));
    let mut resume = distill.to_vec();
    resume.push("--resume");
    let o = apt(&smoke_args(&out, &cache, &resume));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.join("distill/student.safetensors").is_file());
}

/// Probe item 5: ranks started with different stages (an MPMD launch) refuse at once instead
/// of waiting on each other forever.
#[test]
fn ranks_started_with_different_commands_refuse_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let exe = env!("CARGO_BIN_EXE_apt");
    let mut args = vec!["--oversubscribe", "--bind-to", "none", "-np", "1", exe];
    let pretrain = smoke_args(&out, &cache, &["--stage", "pretrain"]);
    let all = smoke_args(&out, &cache, &[]);
    args.extend(pretrain.iter().map(String::as_str));
    args.extend([":", "-np", "1", exe]);
    args.extend(all.iter().map(String::as_str));
    let mut child = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) must be installed: `cargo xtask setup` installs it");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("the ranks are still running after 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("another command or config"), "{err}");
    assert!(!out.exists(), "a refused run left {}", out.display());
}
