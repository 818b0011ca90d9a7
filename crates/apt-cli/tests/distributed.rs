//! `mpirun -np 2 apt train --config configs/smoke.toml`: the whole smoke pipeline on two CPU
//! ranks writes one run directory and one report, and every exported model equals the one a
//! single process trains with the same global batches (within 1e-5). A refused run ends every
//! rank with rank 0's reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use tch::Tensor;

fn mpirun_apt(args: &[String]) -> Output {
    Command::new("mpirun")
        // CI runs as root; two ranks on a 2-core machine.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Local ranks only: no ssh/rsh agent needed (minimal containers have none).
        .env("OMPI_MCA_plm", "isolated")
        .env("RUST_LOG", "info")
        .args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_apt"))
        .args(args)
        .output()
        .expect("mpirun (Open MPI) must be installed: `cargo xtask setup` installs it")
}

fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let read = |p: &Path| {
        let mut t = Tensor::read_safetensors(p).unwrap();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((ka, ta), (kb, tb))| {
            assert_eq!(ka, kb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_run_the_smoke_pipeline_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    // One thread per rank on both sides: the same kernels, so only the reduction order differs.
    // Four pair shards: each rank generates two of them.
    let sets = ["--set", "threads=1", "--set", "distill.shard_size=8"];
    let o = mpirun_apt(&smoke_args(&two, &cache, &sets));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("world       2 ranks (mpi via Mpi)"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("report      ").count(), 1, "{stdout}");
    assert!(two.join("report.md").is_file());
    let log = std::fs::read_to_string(two.join("log.txt")).unwrap();
    assert!(log.contains("rank=0 world=2"), "{log}");
    assert!(!log.contains("rank=1"), "only rank 0 writes the log: {log}");

    let o = apt(&smoke_args(&one, &cache, &sets));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for model in [
        "pretrain/teacher.safetensors",
        "distill/student.safetensors",
        "apt/generator.safetensors",
        "apt/generator-raw.safetensors",
    ] {
        let diff = max_abs_diff(&two.join(model), &one.join(model));
        assert!(
            diff <= 1e-5,
            "{model}: 2 ranks vs 1 process, max |Δ| = {diff:e}"
        );
    }

    // Started again without --resume: rank 0 refuses, and so does rank 1, saying why.
    let o = mpirun_apt(&smoke_args(&two, &cache, &sets));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("already holds checkpoints"), "{err}");
    assert!(err.contains("rank 0 refused to train in"), "{err}");
}

/// LoRA on two ranks: only the adapters are reduced and stepped, and the adapters and the
/// merged generator equal one process's (the tiny Wan pipeline's APT stage).
#[test]
fn lora_on_two_ranks_trains_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    let args = |out: &Path, stage: &str| {
        strings(&[
            "train",
            "--config",
            &config("wan-tiny.toml"),
            "--set",
            &format!("out={:?}", out.to_string_lossy()),
            "--set",
            &format!(
                "model.from={:?}",
                repo().join("assets/wan-tiny").to_string_lossy()
            ),
            "--set",
            "threads=1",
            "--set",
            "apt.lora={rank=4, targets=[\"to_q\", \"to_v\", \"ffn.net.2\"]}",
            "--stage",
            stage,
        ])
    };
    // The teacher and the distilled student first, one process each.
    for out in [&two, &one] {
        for stage in ["pretrain", "distill"] {
            let o = apt(&args(out, stage));
            assert!(o.status.success(), "{}", text(&o.stderr));
        }
    }
    let o = mpirun_apt(&args(&two, "apt"));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let o = apt(&args(&one, "apt"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for file in ["apt/lora.safetensors", "apt/generator.safetensors"] {
        let diff = max_abs_diff(&two.join(file), &one.join(file));
        assert!(diff <= 1e-6, "{file}: two ranks differ by {diff}");
    }
}

/// torchrun from the PyTorch install apt-rs uses (`<venv>/bin/torchrun`, found from the
/// repository's `.libtorch` link into that install's `site-packages/torch`).
fn torchrun() -> PathBuf {
    let torch =
        std::fs::canonicalize(repo().join(".libtorch")).expect("cargo xtask setup links .libtorch");
    torch
        .ancestors()
        .map(|d| d.join("bin/torchrun"))
        .find(|p| p.is_file())
        .expect("torchrun next to the PyTorch install")
}

/// `torchrun --standalone --nproc-per-node 2 --no-python <apt>`, arguments to add.
fn torchrun_apt() -> Command {
    let mut c = Command::new(torchrun());
    c.args(["--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_apt"));
    c
}

/// `torchrun --standalone --nproc-per-node 2 --no-python apt train …`: the ranks join through
/// c10d (torchrun's store, a Gloo group) and the smoke pipeline — here with APT2's
/// relativistic loss and approximated R2 — equals one process with the same global batches.
#[test]
fn torchrun_with_gloo_runs_the_smoke_pipeline_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    let sets = [
        "--set",
        "threads=1",
        "--set",
        "distill.shard_size=8",
        "--set",
        "apt.loss=\"relativistic\"",
        "--set",
        "apt.lambda_r2=100.0",
    ];
    let o = torchrun_apt()
        .args(smoke_args(&two, &cache, &sets))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let stdout = text(&o.stdout);
    assert!(stdout.contains("2 ranks (gloo via Torchrun)"), "{stdout}");
    assert_eq!(stdout.matches("report      ").count(), 1, "{stdout}");
    let o = apt(&smoke_args(&one, &cache, &sets));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for model in [
        "pretrain/teacher.safetensors",
        "distill/student.safetensors",
        "apt/generator.safetensors",
    ] {
        let diff = max_abs_diff(&two.join(model), &one.join(model));
        assert!(
            diff <= 1e-5,
            "{model}: torchrun and one process differ by {diff}"
        );
    }
}

/// Full sharding (ZeRO-3) under torchrun, in bf16 with recomputation: the teacher, the student
/// and APT's G and D take exactly the updates of the same two ranks unsharded (Gloo gathers
/// bf16 weights and reduce-scatters fp32 gradients).
#[test]
fn torchrun_with_full_sharding_in_bf16_trains_like_unsharded_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let common = [
        "--set",
        "threads=1",
        "--set",
        "distill.shard_size=8",
        "--set",
        "precision=\"bf16\"",
        "--set",
        "pretrain.train.recompute=true",
        "--set",
        "apt.train.recompute=true",
    ];
    let sharded = [
        "--set",
        "pretrain.train.shard=\"full\"",
        "--set",
        "distill.train.shard=\"gradients\"",
        "--set",
        "apt.train.shard=\"full\"",
    ];
    let run = |out: &Path, extra: &[&str]| {
        let sets: Vec<&str> = common.iter().chain(extra).copied().collect();
        let o = torchrun_apt()
            .args(smoke_args(out, &cache, &sets))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    };
    let (full, plain) = (dir.path().join("full"), dir.path().join("plain"));
    run(&full, &sharded);
    run(&plain, &[]);
    for model in [
        "pretrain/teacher.safetensors",
        "distill/student.safetensors",
        "apt/generator.safetensors",
    ] {
        let diff = max_abs_diff(&full.join(model), &plain.join(model));
        assert!(
            diff <= 1e-6,
            "{model}: sharded and unsharded differ by {diff}"
        );
    }
}

/// A rank killed under torchrun ends the whole job, non-zero, within seconds (torchrun's agent
/// stops the other ranks), and `--resume` continues from the last checkpoint.
#[test]
fn a_killed_torchrun_rank_ends_the_job_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("killed");
    let long = [
        "--set",
        "threads=1",
        "--stage",
        "pretrain",
        "--set",
        "pretrain.train.steps=4000",
        "--set",
        "pretrain.train.checkpoint_every=10",
    ];
    let mut job = torchrun_apt()
        .args(smoke_args(&out, &cache, &long))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&out.join("pretrain/checkpoints/latest"), &mut job);
    // The workers: the processes training into this run (torchrun itself aside).
    let listed = Command::new("pgrep")
        .args(["-f", &out.to_string_lossy()])
        .output()
        .unwrap();
    let workers: Vec<String> = text(&listed.stdout)
        .lines()
        .map(str::to_string)
        .filter(|pid| *pid != job.id().to_string())
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    let killed_at = std::time::Instant::now();
    Command::new("kill")
        .args(["-9", &workers[1]])
        .status()
        .unwrap();
    let status = job.wait().unwrap();
    assert!(!status.success(), "the job survived a killed rank");
    assert!(
        killed_at.elapsed() < std::time::Duration::from_secs(60),
        "the job took {:?} to end",
        killed_at.elapsed()
    );
    // Every rank is gone, and the run resumes from its last checkpoint.
    let left = Command::new("pgrep")
        .args(["-f", &out.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        text(&left.stdout).trim().is_empty(),
        "{}",
        text(&left.stdout)
    );
    let o = torchrun_apt()
        .args(smoke_args(
            &out,
            &cache,
            &[
                "--set",
                "threads=1",
                "--stage",
                "pretrain",
                "--resume",
                "--set",
                "pretrain.train.steps=100",
                "--set",
                "pretrain.train.checkpoint_every=10",
            ],
        ))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("resumed"), "{}", text(&o.stderr));
    assert!(out.join("pretrain/teacher.safetensors").is_file());
}

/// `[dist] backend`: one the launcher cannot give (MPI under torchrun), or NCCL asked for CPU
/// tensors, is one clear error on every rank, a non-zero exit, and no run directory.
#[test]
fn a_backend_the_launcher_cannot_give_is_refused_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (backend, needle) in [
        ("mpi", "started by Torchrun"),
        ("nccl", "the run's device is the CPU"),
    ] {
        let out = dir.path().join(backend);
        let set = format!("dist.backend={backend:?}");
        let o = torchrun_apt()
            .args(smoke_args(&out, &cache, &["--set", &set]))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{backend} accepted");
        // Every rank says why (their lines may interleave) — unless torchrun, on the first
        // rank's exit, stopped the other before it got there (a race that load decides).
        let err = text(&o.stderr);
        let said = err.matches(needle).count();
        let stopped = err.matches("Signal 15 (SIGTERM) received").count();
        assert_eq!(err.matches("dist.backend is").count(), said, "{err}");
        assert!(said >= 1 && said + stopped >= 2, "{err}");
        assert!(!out.exists(), "{backend}: a run directory was made");
    }
}

/// A rank that cannot reach the store stops after `dist.timeout_s` with an error naming the
/// address, non-zero, without a run directory.
#[test]
fn a_rank_that_cannot_reach_the_store_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("unreached");
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let o = apt_command(&smoke_args(
        &out,
        &dir.path().join("cache"),
        &["--set", "dist.timeout_s=2"],
    ))
    .envs([
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", &port.to_string()),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ])
    .output()
    .unwrap();
    assert_clear_error(
        &o,
        &[
            "rank 1 of 2",
            &format!("127.0.0.1:{port}"),
            "dist.timeout_s",
        ],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(!out.exists());
}

/// Ranks running different builds of `apt` refuse at once, as ranks with different commands.
#[test]
fn ranks_of_different_builds_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("apt-other");
    std::fs::copy(env!("CARGO_BIN_EXE_apt"), &other).unwrap();
    // Another build: the same program with one byte more at the end of the file.
    let mut bytes = std::fs::read(&other).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    let mut perms = std::fs::metadata(&other).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&other, perms).unwrap();
    let out = dir.path().join("run");
    let args = smoke_args(&out, &dir.path().join("cache"), &[]);
    let o = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .args(["--oversubscribe", "--bind-to", "none", "-np", "1"])
        .arg(env!("CARGO_BIN_EXE_apt"))
        .args(&args)
        .args([":", "-np", "1"])
        .arg(&other)
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("another build of the binary"), "{err}");
    assert!(!out.exists());
}
