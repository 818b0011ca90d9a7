//! `cargo xtask bench <name>`: the project's comparative benchmarks, one module per bench
//! (this module dispatches and holds what several of them share: argument parsing, the release
//! build, alternating rounds, medians and seconds per update from `metrics.jsonl`).
//!
//! Every bench first runs `setup` (libtorch, system packages, test assets), then builds what it
//! measures in release mode.

mod data;
mod dist;
mod flow;
mod gan;
mod gpu;
mod model;
mod vae;

use std::path::{Path, PathBuf};

use crate::{cargo, repo_root, run, Failure};

/// What `cargo xtask bench` with no or an unknown bench name says.
const USAGE: &str = "usage: \
    cargo xtask bench model [--size tiny|small] [--threads N] [--rounds R] [--iters K] | \
    cargo xtask bench wan [--size tiny|small] [--threads N] [--rounds R] [--iters K] | \
    cargo xtask bench data | \
    cargo xtask bench flow | \
    cargo xtask bench gan | \
    cargo xtask bench dist [--steps N] [--rounds R] | \
    cargo xtask bench gpu [--python-version 3.12] | \
    cargo xtask bench vae [--rounds R] [--repeats K]  \
    (criterion benches: cargo bench -p apt-mmdit)";

/// Entry point for `cargo xtask bench …`.
pub fn bench(args: &[String]) -> Result<(), Failure> {
    match args.first().map(String::as_str) {
        Some("model") => model::bench(model::Family::Mmdit, &args[1..]),
        Some("wan") => model::bench(model::Family::Wan, &args[1..]),
        Some("data") => data::bench(),
        Some("gan") => gan::bench(),
        Some("dist") => dist::bench(&args[1..]),
        Some("gpu") => gpu::bench(&args[1..]),
        Some("vae") => vae::bench(&args[1..]),
        Some("flow") => flow::bench(),
        _ => Err(Failure::new(USAGE)),
    }
}

/// The value after `name` in `args`, else `default`.
fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The number after `name` in `args`, else `default` parsed.
fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: &str) -> Result<T, Failure> {
    flag(args, name, default)
        .parse()
        .map_err(|_| Failure::new(format!("{name} expects a number")))
}

/// `cargo build --release <args>` at the workspace root, announced as `what`.
fn build_release(args: &[&str], what: &str) -> Result<(), Failure> {
    run(cargo().args(["build", "--release"]).args(args), what)
}

/// A release build product: `target/release/<path>` (e.g. `apt`, `examples/gpu_bench`).
fn release_exe(path: &str) -> PathBuf {
    repo_root().join("target/release").join(path)
}

/// Runs `a` then `b` in even rounds and `b` then `a` in odd ones, so that drift in machine load
/// hits both sides alike.
fn alternate(
    round: usize,
    mut a: impl FnMut() -> Result<(), Failure>,
    mut b: impl FnMut() -> Result<(), Failure>,
) -> Result<(), Failure> {
    if round.is_multiple_of(2) {
        a()?;
        b()
    } else {
        b()?;
        a()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds per update from a stage's `metrics.jsonl` (its `seconds` field, first line to last,
/// so start-up is not counted).
fn seconds_per_step(metrics: &Path) -> Result<f64, Failure> {
    let text = std::fs::read_to_string(metrics)
        .map_err(|e| Failure::new(format!("{}: {e}", metrics.display())))?;
    let seconds: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("\"seconds\":")? + 10..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].trim().parse().ok()
        })
        .collect();
    if seconds.len() < 3 {
        return Err(Failure::new(format!(
            "{}: too few updates",
            metrics.display()
        )));
    }
    Ok((seconds[seconds.len() - 1] - seconds[0]) / (seconds.len() - 1) as f64)
}
