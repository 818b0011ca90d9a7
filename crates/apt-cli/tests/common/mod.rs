//! What the process-level tests share: running the `apt` binary on the shipped configs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn config(name: &str) -> String {
    repo()
        .join("configs")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub fn apt_command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apt"));
    c.args(args).env("RUST_LOG", "info");
    c
}

pub fn apt(args: &[String]) -> Output {
    apt_command(args).output().expect("run apt")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `apt train` on the smoke config with the run (and its text cache) under `out`.
pub fn smoke_args(out: &Path, cache: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["train", "--config", &config("smoke.toml")]);
    for set in [
        format!("out={:?}", out.to_string_lossy()),
        format!("text.cache={:?}", cache.to_string_lossy()),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    args.extend(strings(extra));
    args
}

/// A smoke run with only the teacher trained (`steps` updates, a checkpoint every 2).
pub fn pretrained(out: &Path, cache: &Path, steps: u32) {
    let o = apt(&smoke_args(
        out,
        cache,
        &[
            "--stage",
            "pretrain",
            "--set",
            &format!("pretrain.train.steps={steps}"),
            "--set",
            "pretrain.train.checkpoint_every=2",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// FNV-1a 64 of a file, as the integrity records hold it.
pub fn fnv(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The last line of stderr, which is the error of a failed command.
pub fn error_line(o: &Output) -> String {
    let err = text(&o.stderr);
    err.trim().lines().last().unwrap_or_default().to_string()
}

/// Asserts a failed command printed one clear error containing every needle, no panic.
pub fn assert_clear_error(o: &Output, needles: &[&str]) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "accepted: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    let line = error_line(o);
    assert!(line.starts_with("error: "), "{err}");
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line:?}");
    }
}

/// Waits until `path` exists (the child must still be running).
pub fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {}",
            path.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the file at `path` contains `needle`.
pub fn wait_for_text(path: &Path, needle: &str, child: &mut std::process::Child) {
    let start = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {} said {needle:?}",
            path.display()
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGINT (Ctrl-C) to `child`.
pub fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `apt train` on the smoke config with `extra`, raises Ctrl-C once the run's second
/// teacher-pair shard exists (the pair generation of `--stage distill`), and returns its output.
pub fn interrupted_pair_generation(out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut child = apt_command(&smoke_args(out, cache, extra))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        &out.join("distill/pairs/shard-00001.safetensors"),
        &mut child,
    );
    interrupt(&child);
    child.wait_with_output().unwrap()
}

/// Every file under `dir` with its bytes, sorted by path (to compare a directory before and
/// after a command).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
