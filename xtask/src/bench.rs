//! `cargo xtask bench model`: our MMDiT against PyTorch eager (diffusers' SD3Transformer2DModel)
//! on the same weights, inputs and thread count.
//!
//! Two long-lived workers (scripts/bench_sd3_worker.py and the `bench_worker` example) load
//! the model once; the driver then alternates between them round by round (the order flips
//! every round), so drift in machine load hits both sides alike. It prints each side's median
//! per-iteration time for forward and forward+backward, the ratio, and each process's peak
//! resident memory (VmHWM) and its growth after loading.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::{cargo, repo_root, run, setup, Failure};

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

    fn finish(mut self) -> Result<(f64, f64), Failure> {
        let peak = self.memory("VmHWM")?;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
        Ok((peak, peak - self.rss_after_load_mb))
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

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: &str) -> Result<T, Failure> {
    flag(args, name, default)
        .parse()
        .map_err(|_| Failure::new(format!("{name} expects a number")))
}

/// Entry point for `cargo xtask bench …`.
pub fn bench(args: &[String]) -> Result<(), Failure> {
    match args.first().map(String::as_str) {
        Some("model") => bench_model(&args[1..]),
        Some("data") => bench_data(),
        Some("gan") => {
            setup::setup(false)?;
            run(cargo().args(["build", "--release", "-q", "-p", "apt-gan", "--example", "r1_study"]), "building the R1 study (release)")?;
            let exe = repo_root().join("target/release/examples/r1_study");
            run(Command::new(&exe).arg("study"), "approximated vs exact R1 on the discriminator")?;
            run(Command::new(&exe).args(["step", "approx"]), "one APT step with approximated R1")?;
            run(Command::new(&exe).args(["step", "exact"]), "one APT step with exact R1")
        }
        Some("dist") => bench_dist(&args[1..]),
        Some("gpu") => bench_gpu(&args[1..]),
        Some("vae") => bench_vae(&args[1..]),
        Some("flow") => {
            setup::setup(false)?;
            run(cargo().args(["run", "--release", "-q", "-p", "apt-flow", "--example", "flow_bench"]), "one-step vs 25-step CFG sampling, training throughput")
        }
        _ => Err(Failure::new("usage: cargo xtask bench model [--size tiny|small] [--threads N] [--rounds R] [--iters K] | cargo xtask bench data | cargo xtask bench flow | cargo xtask bench gan | cargo xtask bench dist [--steps N] | cargo xtask bench gpu [--python-version 3.12] | cargo xtask bench vae [--rounds R] [--repeats K]  (criterion benches: cargo bench -p apt-mmdit)")),
    }
}

fn bench_model(args: &[String]) -> Result<(), Failure> {
    let size = flag(args, "--size", "small");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads: usize = parse(args, "--threads", &cores.to_string())?;
    let rounds: usize = parse(args, "--rounds", "6")?;
    let iters: usize = parse(args, "--iters", "5")?;

    let lib = setup::setup(false)?;
    let python = setup::ensure_reference_packages(&lib)?;
    run(
        cargo().args([
            "build",
            "--release",
            "-p",
            "apt-mmdit",
            "--example",
            "bench_worker",
        ]),
        "building the Rust bench worker (release)",
    )?;
    let dir = repo_root().join("target/bench-model");
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(format!("{}: {e}", dir.display())))?;

    let mut py_cmd = Command::new(python);
    py_cmd
        .arg(repo_root().join("scripts/bench_sd3_worker.py"))
        .args(["--size", &size, "--threads", &threads.to_string()])
        .arg("--dir")
        .arg(&dir);
    let mut py = Worker::start("PyTorch", py_cmd)?;
    let mut rs_cmd = Command::new(repo_root().join("target/release/examples/bench_worker"));
    rs_cmd
        .arg("--dir")
        .arg(&dir)
        .args(["--threads", &threads.to_string()]);
    let mut rs = Worker::start("Rust", rs_cmd)?;

    println!("bench model: size {size}, {threads} threads, {rounds} rounds x {iters} iterations per side and mode, interleaved");
    let modes = ["fwd", "train"];
    let mut times: [[Vec<f64>; 2]; 2] = Default::default(); // [mode][py, rs]
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            if round % 2 == 0 {
                times[m][0].extend(py.run(mode, iters)?);
                times[m][1].extend(rs.run(mode, iters)?);
            } else {
                times[m][1].extend(rs.run(mode, iters)?);
                times[m][0].extend(py.run(mode, iters)?);
            }
        }
    }
    let (py_peak, py_growth) = py.finish()?;
    let (rs_peak, rs_growth) = rs.finish()?;

    println!(
        "{:<22} {:>14} {:>14} {:>16}",
        "median ms/iteration", "PyTorch eager", "apt-mmdit", "ratio (ours/py)"
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

/// One `frames_per_s` of a speed command's JSON lines, by direction.
fn frames_per_s(out: &str, direction: &str) -> Result<f64, Failure> {
    out.lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .find(|l| {
            l.contains(&format!("\"direction\":\"{direction}\""))
                || l.contains(&format!("\"direction\": \"{direction}\""))
        })
        .and_then(|l| {
            let key = "\"frames_per_s\":";
            let rest = &l[l.find(key)? + key.len()..];
            rest.trim_start()
                .split([',', '}'])
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| Failure::new(format!("no {direction} frames_per_s in {out:?}")))
}

fn output_of(cmd: &mut Command, what: &str) -> Result<String, Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo xtask bench vae`: encode and decode frames/s of our Wan 2.1 and SD3 VAEs against
/// diffusers' on the same random-weight directories (released sizes) and inputs, fp32, this
/// machine's threads; the two sides alternate round by round (order flipped every round).
fn bench_vae(args: &[String]) -> Result<(), Failure> {
    let rounds: usize = parse(args, "--rounds", "3")?;
    let repeats: usize = parse(args, "--repeats", "3")?;
    let lib = setup::setup(false)?;
    let python = setup::ensure_reference_packages(&lib)?;
    run(
        cargo().args(["build", "--release", "-q", "-p", "apt-cli"]),
        "building apt (release)",
    )?;
    let dir = repo_root().join("target/bench-vae");
    if !dir.join("sd3/config.json").is_file() {
        run(
            Command::new(&python)
                .arg(repo_root().join("scripts/bench_vae.py"))
                .args(["make", "--out"])
                .arg(&dir),
            "writing random-weight Wan 2.1 and SD3 VAE directories (diffusers)",
        )?;
    }
    let apt = repo_root().join("target/release/apt");
    let cases = [
        ("wan2.1", "1,17,64,64", "video 17x64x64"),
        ("sd3", "1,1,256,256", "image 256x256"),
    ];
    println!("bench vae: fp32, {rounds} rounds x median of {repeats} (after a warm-up) per side, alternating");
    println!(
        "{:<26} {:>16} {:>16} {:>14}",
        "frames/s (median)", "diffusers", "apt-vae", "ratio (ours/py)"
    );
    for (model, shape, label) in cases {
        let vae = dir.join(model);
        let mut ours = [Vec::new(), Vec::new()];
        let mut theirs = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let mut rs = || -> Result<(), Failure> {
                let out = output_of(
                    Command::new(&apt)
                        .args(["vae", "speed", "--diffusers"])
                        .arg(&vae)
                        .args(["--shape", shape, "--repeats", &repeats.to_string()]),
                    "apt vae speed",
                )?;
                ours[0].push(frames_per_s(&out, "encode")?);
                ours[1].push(frames_per_s(&out, "decode")?);
                Ok(())
            };
            let mut py = || -> Result<(), Failure> {
                let out = output_of(
                    Command::new(&python)
                        .arg(repo_root().join("scripts/bench_vae.py"))
                        .args(["speed", "--diffusers"])
                        .arg(&vae)
                        .args(["--shape", shape, "--repeats", &repeats.to_string()]),
                    "bench_vae.py speed",
                )?;
                theirs[0].push(frames_per_s(&out, "encode")?);
                theirs[1].push(frames_per_s(&out, "decode")?);
                Ok(())
            };
            if round % 2 == 0 {
                rs()?;
                py()?;
            } else {
                py()?;
                rs()?;
            }
        }
        for (d, direction) in ["encode", "decode"].iter().enumerate() {
            let (p, r) = (median(theirs[d].clone()), median(ours[d].clone()));
            println!(
                "{:<26} {p:>16.2} {r:>16.2} {:>14.3}",
                format!("{model} {direction} ({label})"),
                r / p
            );
        }
    }
    Ok(())
}

/// `cargo xtask bench data`: decode throughput against the `ffmpeg` tool, and loader clips/s.
fn bench_data() -> Result<(), Failure> {
    setup::setup(false)?;
    run(
        cargo().args([
            "build",
            "--release",
            "-p",
            "apt-data",
            "--example",
            "data_bench",
            "-p",
            "apt-cli",
        ]),
        "building the data benchmark and the apt binary (release)",
    )?;
    let exe = repo_root().join("target/release/examples/data_bench");
    let apt = repo_root().join("target/release/apt");
    let clips = apt_build::assets_dir()
        .expect("setup resolved it")
        .join("clips");
    let work = repo_root().join("target/bench-data");
    let _ = std::fs::remove_dir_all(&work);
    let shapes = work.join("shapes");
    run(
        Command::new(&apt)
            .args([
                "data", "shapes", "--count", "64", "--frames", "16", "--height", "64", "--width",
                "64", "--speeds", "1,2", "--out",
            ])
            .arg(&shapes),
        "writing 64 moving-shapes clips",
    )?;
    let real = work.join("real");
    std::fs::create_dir_all(&real).map_err(|e| Failure::new(e.to_string()))?;
    for name in [
        "bikes.mp4",
        "carphone_pristine.mp4",
        "cockatoo.mp4",
        "realshort.mp4",
    ] {
        std::fs::copy(clips.join(name), real.join(name))
            .map_err(|e| Failure::new(format!("{name}: {e}")))?;
        std::fs::write(real.join(name).with_extension("txt"), "a real clip")
            .map_err(|e| Failure::new(e.to_string()))?;
    }
    let decode_cases = [
        ("bikes.mp4", "128", "64"),
        ("cockatoo.mp4", "256", "144"),
        ("cockatoo.mp4", "1280", "720"),
    ];
    for (clip, w, h) in decode_cases {
        let path = clips.join(clip);
        run(
            Command::new(&exe)
                .arg("decode")
                .arg(&path)
                .args([w, h, "5"]),
            &format!("decode {clip} at {w}x{h}"),
        )?;
    }
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&shapes)
            .args(["8", "32", "24"]),
        "loader on moving shapes",
    )?;
    let reals: Vec<std::path::PathBuf> = [
        "bikes.mp4",
        "carphone_pristine.mp4",
        "cockatoo.mp4",
        "realshort.mp4",
    ]
    .iter()
    .map(|n| real.join(n))
    .collect();
    run(
        Command::new(&exe).args(["clips", "20"]).args(&reals),
        "random clips: whole-file decode vs indexed (seek + stop)",
    )?;
    // A 2 s and a 60 s 720p clip (key frame every 2 s, as encoders default to): an 8-frame clip
    // from either should cost about the same once indexed.
    let mut long = Vec::new();
    for seconds in ["2", "60"] {
        let out = work.join(format!("bikes-720p-{seconds}s.mp4"));
        run(
            Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-stream_loop", "-1", "-i"])
                .arg(clips.join("bikes.mp4"))
                .args([
                    "-t",
                    seconds,
                    "-an",
                    "-vf",
                    "scale=1280:720",
                    "-c:v",
                    "libx264",
                ])
                .args(["-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
                .arg(&out),
            &format!("encoding a {seconds} s 720p clip"),
        )?;
        long.push(out);
    }
    run(
        Command::new(&exe).args(["clips", "10"]).args(&long),
        "8-frame clips from a 2 s and a 60 s 720p file",
    )?;
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&real)
            .args(["8", "64", "12"]),
        "loader on real clips (8 consecutive frames, 64x64: the issue-15 baseline's setting)",
    )?;
    run(
        Command::new(&exe)
            .arg("loader")
            .arg(&real)
            .args(["8", "32", "12", "8"]),
        "loader on real clips (configs/real-videos.toml's clips)",
    )?;
    training_consumption(&apt, &work)
}

/// Clips/s one pre-training update of configs/real-videos.toml consumes (the `small` preset,
/// batch 8 of 8×32×32 clips), timed on rendered shapes of that size so no loader is involved.
fn training_consumption(apt: &std::path::Path, work: &std::path::Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(repo_root().join("configs/real-videos.toml"))
        .map_err(|e| Failure::new(format!("configs/real-videos.toml: {e}")))?;
    let (head, rest) = text
        .split_once("[data]")
        .ok_or_else(|| Failure::new("configs/real-videos.toml has no [data]"))?;
    let tail = &rest[rest
        .find("[text]")
        .ok_or_else(|| Failure::new("no [text]"))?..];
    let config = work.join("consumption.toml");
    let shapes =
        "[data]\nkind = \"shapes\"\n[data.shapes]\nframes = 8\nheight = 32\nwidth = 32\n\n";
    std::fs::write(&config, format!("{head}{shapes}{tail}"))
        .map_err(|e| Failure::new(e.to_string()))?;
    let out = work.join("consumption");
    let _ = std::fs::remove_dir_all(&out);
    run(
        Command::new(apt)
            .args(["train", "--stage", "pretrain", "--config"])
            .arg(&config)
            .args(["--set", &format!("out={:?}", out.display().to_string())])
            .args(["--set", "pretrain.train.steps=12"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        "timing pre-training updates of the real-videos config (small preset, batch 8)",
    )?;
    let s = seconds_per_step(&out.join("pretrain/metrics.jsonl"))?;
    println!(
        "training consumption (configs/real-videos.toml, small preset, batch 8, 2 threads): {s:.3} s/update = {:.1} clips/s",
        8.0 / s
    );
    Ok(())
}

/// Seconds per update from a stage's `metrics.jsonl` (its `seconds` field, first line to last,
/// so start-up is not counted).
fn seconds_per_step(metrics: &std::path::Path) -> Result<f64, Failure> {
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

/// `cargo xtask bench dist`: pre-training updates of the demo (small preset, global batch 16)
/// in one process with 1 and 2 threads and on 2 MPI ranks of 1 thread, interleaved over
/// rounds; prints seconds per update and the 2-rank scaling efficiency.
fn bench_dist(args: &[String]) -> Result<(), Failure> {
    let steps: u64 = parse(args, "--steps", "40")?;
    let rounds: usize = parse(args, "--rounds", "2")?;
    setup::setup(false)?;
    run(
        cargo().args(["build", "--release", "-q", "-p", "apt-cli"]),
        "building the apt binary (release)",
    )?;
    let apt = repo_root().join("target/release/apt");
    let config = repo_root().join("configs/demo.toml");
    let work = repo_root().join("target/bench-dist");
    let cases: [(&str, usize, usize); 3] = [
        ("1 process, 1 thread", 1, 1),
        ("1 process, 2 threads", 1, 2),
        ("2 MPI ranks, 1 thread each", 2, 1),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, (name, ranks, threads)) in cases.iter().enumerate() {
            let out = work.join(format!("r{round}-{i}"));
            let _ = std::fs::remove_dir_all(&out);
            let mut cmd = if *ranks > 1 {
                let mut c = Command::new("mpirun");
                c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                    .env("OMPI_MCA_plm", "isolated")
                    .args(["--oversubscribe", "--bind-to", "none", "-np"])
                    .arg(ranks.to_string())
                    .arg(&apt);
                c
            } else {
                Command::new(&apt)
            };
            cmd.args(["train", "--stage", "pretrain", "--config"])
                .arg(&config)
                .args(["--set", &format!("out={:?}", out.display().to_string())])
                .args(["--set", &format!("threads={threads}")])
                .args(["--set", &format!("pretrain.train.steps={steps}")])
                .args(["--set", "pretrain.val_clips=0"])
                // The demo imports its teacher; this measures training one.
                .args(["--set", "pretrain.from=\"\""])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null());
            run(&mut cmd, &format!("round {round}: {name}"))?;
            times[i].push(seconds_per_step(&out.join("pretrain/metrics.jsonl"))?);
        }
    }
    let t: Vec<f64> = times.into_iter().map(median).collect();
    println!("pre-training the demo's teacher (small preset, global batch 16), median of {rounds} rounds:");
    for ((name, _, _), s) in cases.iter().zip(&t) {
        println!("  {name:<28} {:7.3} s/update  {:6.1} clips/s", s, 16.0 / s);
    }
    println!(
        "2-rank scaling efficiency vs 1 process of 1 thread: {:.0}% (speed-up {:.2}x; 2 threads in one process: {:.2}x)",
        100.0 * t[0] / (2.0 * t[2]),
        t[0] / t[2],
        t[0] / t[1]
    );
    Ok(())
}

/// Prepares `device-carry/` for `scripts/gpu_bench.sh` on a lent GPU machine (which has torch but
/// no Rust and no network): the `gpu_bench` example, release, stripped and xz-compressed, and
/// the wheels of diffusers and its dependencies for that machine's Python.
fn bench_gpu(args: &[String]) -> Result<(), Failure> {
    let python_version = flag(args, "--python-version", "3.12");
    setup::setup(false)?;
    run(
        cargo().args([
            "build",
            "--release",
            "-p",
            "apt-gan",
            "--example",
            "gpu_bench",
        ]),
        "building the GPU bench (release)",
    )?;
    let carry = repo_root().join("device-carry");
    let wheels = carry.join("wheels");
    std::fs::create_dir_all(&wheels)
        .map_err(|e| Failure::new(format!("{}: {e}", wheels.display())))?;
    let exe = repo_root().join("target/release/examples/gpu_bench");
    let stripped = repo_root().join("target/release/examples/gpu_bench.stripped");
    run(
        Command::new("strip").arg("-o").arg(&stripped).arg(&exe),
        "stripping the GPU bench",
    )?;
    let xz = std::fs::File::create(carry.join("gpu_bench.xz"))
        .map_err(|e| Failure::new(format!("{}: {e}", carry.display())))?;
    run(
        Command::new("xz")
            .args(["-9", "-c"])
            .arg(&stripped)
            .stdout(xz),
        "compressing the GPU bench",
    )?;
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "diffusers", "--dest"])
            .arg(&wheels)
            .args([
                "--only-binary=:all:",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux_2_28_x86_64",
                "--python-version",
                &python_version,
            ]),
        "downloading diffusers and its dependencies",
    )?;
    println!(
        "bench gpu: device-carry/ is ready. On a lent GPU (the device tool's `run`):\n  \
         command: bash scripts/gpu_bench.sh   carry: [\"device-carry\"]   timeout_s: 600\n\
         It writes $OUT/gpu-bench.jsonl: (a) seaweed-8b one-step latency at 720p 2 s, (b) sd3-medium \
         flow and APT update time, tokens/s, MFU, (c) diffusers SD3 eager on the same device, \
         (d) peak device memory of each."
    );
    Ok(())
}
