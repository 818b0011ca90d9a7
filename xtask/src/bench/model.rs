//! `cargo xtask bench model` and `cargo xtask bench wan`: our MMDiT / Wan 2.1 transformer
//! against PyTorch eager (diffusers' SD3Transformer2DModel / WanTransformer3DModel) on the same
//! weights, inputs and thread count.
//!
//! Two long-lived workers (scripts/bench_sd3_worker.py or bench_wan_worker.py, and the
//! `bench_worker` example) load
//! the model once; the driver then alternates between them round by round (the order flips
//! every round), so drift in machine load hits both sides alike. It prints each side's median
//! per-iteration time for forward and forward+backward, the ratio, and each process's peak
//! resident memory (VmHWM) and its growth after loading.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::{alternate, build_release, flag, median, parse, release_exe};
use crate::{repo_root, setup, Failure};

/// One side's long-lived worker process, driven over stdin/stdout: it says `ready` once the
/// model is loaded, answers `<mode> <iters>` with `times <ms>…`, and exits on `quit`.
struct Worker {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    rss_after_load_mb: f64,
}

impl Worker {
    fn start(name: &'static str, mut cmd: Command) -> Result<Self, Failure> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start the {name} worker: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut worker = Self {
            name,
            child,
            stdin,
            stdout,
            rss_after_load_mb: 0.0,
        };
        let line = worker.read_line()?;
        if line.trim() != "ready" {
            return Err(Failure::new(format!(
                "{name} worker said {line:?} instead of ready"
            )));
        }
        worker.rss_after_load_mb = worker.memory("VmRSS")?;
        Ok(worker)
    }

    fn read_line(&mut self) -> Result<String, Failure> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| Failure::new(format!("{} worker: {e}", self.name)))?;
        if n == 0 {
            return Err(Failure::new(format!(
                "the {} worker exited early (see its error above)",
                self.name
            )));
        }
        Ok(line)
    }

    fn run(&mut self, mode: &str, iters: usize) -> Result<Vec<f64>, Failure> {
        writeln!(self.stdin, "{mode} {iters}")
            .map_err(|e| Failure::new(format!("{} worker: {e}", self.name)))?;
        let line = self.read_line()?;
        let rest = line
            .trim()
            .strip_prefix("times ")
            .ok_or_else(|| Failure::new(format!("{} worker said {line:?}", self.name)))?;
        Ok(rest
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect())
    }

    /// A `/proc/<pid>/status` memory field, in MB.
    fn memory(&self, field: &str) -> Result<f64, Failure> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| Failure::new(e.to_string()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| Failure::new(format!("no {field} in /proc status")))?;
        Ok(kb / 1024.0)
    }

    /// Peak resident memory and its growth after loading, in MB; then tells the worker to quit.
    fn finish(mut self) -> Result<(f64, f64), Failure> {
        let peak = self.memory("VmHWM")?;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
        Ok((peak, peak - self.rss_after_load_mb))
    }
}

/// The model a bench compares.
#[derive(Clone, Copy)]
pub(super) enum Family {
    /// The MMDiT against diffusers' SD3Transformer2DModel.
    Mmdit,
    /// The Wan 2.1 transformer against diffusers' WanTransformer3DModel.
    Wan,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Mmdit => "model",
            Family::Wan => "wan",
        }
    }

    fn python_worker(self) -> &'static str {
        match self {
            Family::Mmdit => "scripts/bench_sd3_worker.py",
            Family::Wan => "scripts/bench_wan_worker.py",
        }
    }

    fn ours(self) -> &'static str {
        match self {
            Family::Mmdit => "apt-mmdit",
            Family::Wan => "apt Wan",
        }
    }
}

/// Entry point for `cargo xtask bench model|wan [--size tiny|small] [--threads N]
/// [--rounds R] [--iters K]`.
pub(super) fn bench(family: Family, args: &[String]) -> Result<(), Failure> {
    let size = flag(args, "--size", "small");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads: usize = parse(args, "--threads", &cores.to_string())?;
    let rounds: usize = parse(args, "--rounds", "6")?;
    let iters: usize = parse(args, "--iters", "5")?;

    let lib = setup::setup(false)?;
    let python = setup::ensure_reference_packages(&lib)?;
    build_release(
        &["-p", "apt-mmdit", "--example", "bench_worker"],
        "building the Rust bench worker (release)",
    )?;
    let dir = repo_root().join(format!("target/bench-{}", family.name()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(format!("{}: {e}", dir.display())))?;

    let mut py_cmd = Command::new(python);
    py_cmd
        .arg(repo_root().join(family.python_worker()))
        .args(["--size", &size, "--threads", &threads.to_string()])
        .arg("--dir")
        .arg(&dir);
    let mut py = Worker::start("PyTorch", py_cmd)?;
    let mut rs_cmd = Command::new(release_exe("examples/bench_worker"));
    rs_cmd
        .arg("--dir")
        .arg(&dir)
        .args(["--threads", &threads.to_string()]);
    let mut rs = Worker::start("Rust", rs_cmd)?;

    println!(
        "bench {}: size {size}, {threads} threads, {rounds} rounds x {iters} iterations per side and mode, interleaved",
        family.name()
    );
    let modes = ["fwd", "train"];
    let mut times: [[Vec<f64>; 2]; 2] = Default::default(); // [mode][py, rs]
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let [py_times, rs_times] = &mut times[m];
            alternate(
                round,
                || {
                    py_times.extend(py.run(mode, iters)?);
                    Ok(())
                },
                || {
                    rs_times.extend(rs.run(mode, iters)?);
                    Ok(())
                },
            )?;
        }
    }
    let (py_peak, py_growth) = py.finish()?;
    let (rs_peak, rs_growth) = rs.finish()?;

    println!(
        "{:<22} {:>14} {:>14} {:>16}",
        "median ms/iteration",
        "PyTorch eager",
        family.ours(),
        "ratio (ours/py)"
    );
    for (m, label) in ["forward", "forward+backward"].iter().enumerate() {
        let (p, r) = (median(times[m][0].clone()), median(times[m][1].clone()));
        println!("{label:<22} {p:>14.2} {r:>14.2} {:>16.3}", r / p);
    }
    println!(
        "{:<22} {:>14.0} {:>14.0}",
        "peak RSS (MB)", py_peak, rs_peak
    );
    println!(
        "{:<22} {:>14.0} {:>14.0}",
        "  growth after load", py_growth, rs_growth
    );
    Ok(())
}
