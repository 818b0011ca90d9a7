//! `cargo xtask bench gpu`: measures nothing here; it prepares `device-carry/` for
//! `scripts/gpu_bench.sh` on a lent GPU machine (which has torch but no Rust and no network):
//! the `gpu_bench` example, release, stripped and xz-compressed, and the wheels of diffusers
//! and its dependencies for that machine's Python. The script then measures one-step latency,
//! flow/APT update time, tokens/s and MFU, diffusers SD3 eager, and peak device memory.

use std::process::Command;

use super::{build_release, flag, release_exe};
use crate::{repo_root, run, setup, Failure};

/// Entry point for `cargo xtask bench gpu [--python-version 3.12]`.
pub(super) fn bench(args: &[String]) -> Result<(), Failure> {
    let python_version = flag(args, "--python-version", "3.12");
    setup::setup(false)?;
    build_release(
        &["-p", "apt-gan", "--example", "gpu_bench"],
        "building the GPU bench (release)",
    )?;
    let carry = repo_root().join("device-carry");
    let wheels = carry.join("wheels");
    std::fs::create_dir_all(&wheels)
        .map_err(|e| Failure::new(format!("{}: {e}", wheels.display())))?;
    let exe = release_exe("examples/gpu_bench");
    let stripped = release_exe("examples/gpu_bench.stripped");
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
         (d) Wan 2.1 1.3B one-step latency at 480p 81 frames, ours and diffusers', \
         (e) peak device memory of each."
    );
    Ok(())
}
