//! Project automation for apt-rs: `cargo xtask <command>`. Every command first runs `setup`
//! (libtorch with no manual steps; see setup.rs). Its one dependency is the workspace's
//! dependency-free `apt-build` (cache locations, libtorch version), so it builds in seconds on a
//! fresh machine before libtorch exists. See xtask/README.md.

mod assets;
mod bench;
mod setup;
mod standalone;
mod system;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const HELP: &str = "\
cargo xtask <command> [args]

  setup            install what is missing: FFmpeg dev libraries and tools (apt-get),
                   PyTorch 2.11.0 (libtorch) in a per-user cache (APT_TORCH_HOME; an
                   existing LIBTORCH is honoured), test clips and the MiniLM encoder
                   (APT_ASSETS_HOME)
  doctor           libtorch version and path, threads, CUDA devices, bf16 support
  test             setup, cargo fmt --check, clippy -D warnings, cargo test --workspace,
                   then `standalone`
  standalone       apt-mmdit, apt-flow, apt-gan, apt-dist, apt-data and apt-vae each used
                   alone from a crate outside the workspace: no FFmpeg/tokenizers in the method
                   crates' graphs (cargo tree), and each README example compiles there
  train [args]     the main job: `apt train --config configs/demo.toml` (import the shipped
                   teacher → distil → APT → runs/demo/report.md, ≤ 30 min on 2 CPU cores;
                   `--set pretrain.from=` pre-trains it instead, ~70 min); extra args go to
                   `apt train` (--config FILE, --resume, --set key=value, --dry-run)
  fixtures         regenerate the diffusers parity fixtures (installs diffusers)
  bench model      Rust vs PyTorch eager (diffusers) on the same SD3 model, interleaved
        [--size tiny|small] [--threads N] [--rounds R] [--iters K]
  bench data       decoding vs the ffmpeg tool (frames/s), loader clips/s at 1 and 2 workers
  bench dist       pre-training updates: 1 process (1 and 2 threads) vs 2 MPI ranks
        [--steps N] [--rounds R]
  bench flow       one-step generation vs the 25-step CFG teacher, training samples/s
  bench vae        Wan 2.1 / SD3 VAE encode+decode frames/s vs diffusers, alternating
        [--rounds R] [--repeats K]
  bench gan        approximated vs exact R1 (correlation, ratio), APT step time and memory
  bench gpu        prepare the GPU benchmark (release binary + pip wheels in device-carry/
        for scripts/gpu_bench.sh) [--python-version 3.12]
  fuzz [SECONDS]   fuzz the decoder entry point (cargo-fuzz; real clips as seed corpus)
  help             this text
";

/// A failure that ends the command with one clear message.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` as invoked (the `CARGO` variable cargo sets for us), at the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// Runs `cmd`, failing with `what` when it does not succeed.
pub fn run(cmd: &mut Command, what: &str) -> Result<(), Failure> {
    println!("xtask: {what}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::new(format!("{what} failed ({s})"))),
        Err(e) => Err(Failure::new(format!("{what}: cannot start: {e}"))),
    }
}

fn test() -> Result<(), Failure> {
    setup::setup(true)?;
    run(
        cargo().args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    run(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy -D warnings",
    )?;
    run(
        cargo().args(["test", "--workspace"]),
        "cargo test --workspace",
    )?;
    standalone::check()
}

fn doctor() -> Result<(), Failure> {
    setup::setup(true)?;
    println!("xtask: building the `apt` binary");
    let build = cargo().args(["build", "--quiet", "-p", "apt-cli"]).status();
    if !matches!(build, Ok(s) if s.success()) {
        return Err(Failure::new("building apt-cli failed (see above)"));
    }
    let exe = repo_root().join("target/debug/apt");
    let out = Command::new(&exe)
        .arg("doctor")
        .output()
        .map_err(|e| Failure::new(format!("cannot run {}: {e}", exe.display())))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprint!("{stderr}");
        return Ok(());
    }
    if stderr.contains("error while loading shared libraries") {
        return Err(Failure::new(format!(
            "libtorch could not be loaded: {}; run `cargo xtask setup`, or point LD_LIBRARY_PATH at a PyTorch 2.11 `torch/lib`",
            stderr.trim()
        )));
    }
    Err(Failure::new(format!(
        "`apt doctor` failed: {}",
        stderr.trim()
    )))
}

fn fixtures() -> Result<(), Failure> {
    let lib = setup::setup(true)?;
    let python = setup::ensure_reference_packages(&lib)?;
    let out = repo_root().join("crates/apt-mmdit/tests/fixtures");
    let minilm = apt_build::assets_dir()
        .expect("setup resolved it")
        .join("minilm");
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_minilm_fixture.py"))
            .arg("--model")
            .arg(minilm)
            .arg("--out")
            .arg(repo_root().join("crates/apt-data/tests/fixtures/minilm.safetensors"))
            .arg("--io-out")
            .arg(repo_root().join("crates/apt-data/tests/fixtures/minilm.io.safetensors")),
        "transformers MiniLM parity fixture",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_umt5_fixture.py"))
            .arg("--out")
            .arg(repo_root().join("crates/apt-data/tests/fixtures/umt5")),
        "transformers UMT5 encoder and tokenizer fixture (Wan 2.1's text encoder)",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_optimizer_fixture.py"))
            .arg("--out")
            .arg(repo_root().join("crates/apt-flow/tests/fixtures/optimizers.safetensors")),
        "torch.optim AdamW/RMSprop fixture",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_seed_gan_fixture.py"))
            .arg("--out")
            .arg(repo_root().join("crates/apt-gan/tests/fixtures/seed_gan.safetensors")),
        "the source article's WGAN-GP fixture",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_vae_fixtures.py"))
            .arg("--out")
            .arg(repo_root().join("crates/apt-vae/tests/fixtures")),
        "diffusers Wan 2.1 / SD3 VAE parity fixtures",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_wan_fixtures.py"))
            .arg("--out")
            .arg(out.join("wan")),
        "diffusers Wan 2.1 transformer parity fixtures",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_lora_fixture.py"))
            .arg("--wan")
            .arg(out.join("wan/wan-test"))
            .arg("--out")
            .arg(out.join("lora")),
        "a diffusers + PEFT LoRA adapter on the tiny Wan transformer",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_fvd_fixture.py"))
            .arg("--out")
            .arg(repo_root().join("crates/apt-pipeline/tests/fixtures/fvd")),
        "FVD plumbing: an I3D-interface TorchScript module and scipy's Fréchet distance",
    )?;
    run(
        Command::new(&python)
            .arg(repo_root().join("scripts/make_wan_tiny.py"))
            .arg("--out")
            .arg(repo_root().join("assets/wan-tiny")),
        "a random tiny Wan 2.1 pipeline directory (configs/wan-tiny.toml's teacher)",
    )?;
    run(
        Command::new(python)
            .arg(repo_root().join("scripts/make_sd3_fixtures.py"))
            .arg("--out")
            .arg(&out),
        "diffusers SD3 parity fixtures",
    )?;
    println!(
        "xtask: fixtures written to {}; run `cargo test -p apt-mmdit --test parity`",
        out.display()
    );
    Ok(())
}

/// `cargo xtask train [apt train options]`: the whole pipeline on `configs/demo.toml` (or the
/// `--config` given), release build.
fn train(args: &[String]) -> Result<(), Failure> {
    setup::setup(true)?;
    let mut cmd = cargo();
    cmd.current_dir(repo_root())
        .args(["run", "--release", "-q", "-p", "apt-cli", "--", "train"]);
    if !args
        .iter()
        .any(|a| a == "--config" || a.starts_with("--config="))
    {
        cmd.args(["--config", "configs/demo.toml"]);
    }
    // Run a second time, the main command continues the run it made (finished stages are
    // skipped and the report printed again); --fresh starts over, --resume insists.
    let chosen = ["--resume", "--fresh", "--continue", "--dry-run"];
    if !args.iter().any(|a| chosen.contains(&a.as_str())) {
        cmd.arg("--continue");
    }
    cmd.args(args);
    println!(
        "xtask: building apt (release; the first build compiles the libtorch bindings, 5-9 min)"
    );
    run(&mut cmd, "apt train")
}

fn fuzz(seconds: &str) -> Result<(), Failure> {
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| Failure::new(format!("fuzz: {seconds:?} is not a number of seconds")))?;
    setup::setup(false)?;
    let has_cargo_fuzz = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        return Err(Failure::new(
            "cargo-fuzz is not installed: run `cargo install cargo-fuzz`",
        ));
    }
    let fuzz_dir = repo_root().join("crates/apt-data/fuzz");
    let corpus = fuzz_dir.join("corpus/decode");
    std::fs::create_dir_all(&corpus)
        .map_err(|e| Failure::new(format!("{}: {e}", corpus.display())))?;
    // Seed corpus: the small real clips of every container and codec.
    let clips = apt_build::assets_dir()
        .expect("setup resolved it")
        .join("clips");
    for dir in [clips.clone(), clips.join("derived")] {
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| Failure::new(format!("{}: {e}", dir.display())))?
            .flatten()
        {
            let path = entry.path();
            if path.is_file() && entry.metadata().is_ok_and(|m| m.len() <= 256 * 1024) {
                let _ = std::fs::copy(&path, corpus.join(entry.file_name()));
            }
        }
    }
    let mut cmd = cargo();
    cmd.current_dir(&fuzz_dir)
        .args(["fuzz", "run", "--sanitizer", "none", "--dev", "decode"])
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-max_len=262144",
            "-rss_limit_mb=8192",
            "-timeout=30",
        ]);
    run(&mut cmd, &format!("fuzzing the decoder for {seconds} s"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(true).map(|_| ()),
        Some("doctor") => doctor(),
        Some("test") => test(),
        Some("train") => train(&args[1..]),
        Some("standalone") => setup::setup(true).and_then(|_| standalone::check()),
        Some("fixtures") => fixtures(),
        Some("bench") => bench::bench(&args[1..]),
        Some("fuzz") => fuzz(args.get(1).map(String::as_str).unwrap_or("60")),
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(Failure::new(format!("unknown command `{other}`\n\n{HELP}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
