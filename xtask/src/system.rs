//! System packages the workspace builds against: FFmpeg 5.1's development libraries (for
//! `ffmpeg-next`), `libclang` (its bindgen), `pkg-config`, and the `ffmpeg`/`ffprobe` tools
//! (tests compare our decoder with `ffprobe -count_frames`; setup transcodes test clips), and
//! the DejaVu font the report's plots are labelled with, and Open MPI (the `mpi` crate builds
//! against it through `mpicc`; the data-parallel tests launch ranks with `mpirun`).
//! Installed with apt-get when missing (Debian/Ubuntu), as root or through sudo.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::Failure;

/// Debian package names, in install order.
pub const PACKAGES: &[&str] = &[
    "pkg-config",
    "libavcodec-dev",
    "libavformat-dev",
    "libavutil-dev",
    "libswscale-dev",
    "libclang-dev",
    "ffmpeg",
    "fonts-dejavu-core",
    "libopenmpi-dev",
    "openmpi-bin",
    // Gloo's headers: the c10d shim of apt-dist compiles against them (the PyTorch wheel
    // ships c10d's headers but not Gloo's; the library itself is inside libtorch_cpu).
    "libgloo-dev",
];

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is missing, as Debian package names.
fn missing() -> Vec<&'static str> {
    let mut out = Vec::new();
    if !quiet(Command::new("pkg-config").arg("--version")) {
        out.push("pkg-config");
    }
    for (lib, pkg) in [
        ("libavcodec", "libavcodec-dev"),
        ("libavformat", "libavformat-dev"),
        ("libavutil", "libavutil-dev"),
        ("libswscale", "libswscale-dev"),
    ] {
        if !quiet(Command::new("pkg-config").args(["--exists", lib])) {
            out.push(pkg);
        }
    }
    if !has_libclang() {
        out.push("libclang-dev");
    }
    if !quiet(Command::new("ffprobe").arg("-version"))
        || !quiet(Command::new("ffmpeg").arg("-version"))
    {
        out.push("ffmpeg");
    }
    if !Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file() {
        out.push("fonts-dejavu-core");
    }
    if !quiet(Command::new("mpicc").arg("-showme:version")) {
        out.push("libopenmpi-dev");
    }
    if !quiet(Command::new("mpirun").arg("--version")) {
        out.push("openmpi-bin");
    }
    if !Path::new("/usr/include/gloo/algorithm.h").is_file() {
        out.push("libgloo-dev");
    }
    out
}

fn has_libclang() -> bool {
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let dirs = [
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ];
    let llvm = std::fs::read_dir("/usr/lib")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("lib"))
                .filter(|p| p.to_string_lossy().contains("llvm-"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    dirs.iter()
        .map(Path::new)
        .map(Path::to_path_buf)
        .chain(llvm)
        .any(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("libclang") && name.contains(".so")
                })
            })
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs whatever is missing; fast (a few `pkg-config` calls) when nothing is.
pub fn ensure(verbose: bool) -> Result<(), Failure> {
    let need = missing();
    if need.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get update && apt-get install -y {}",
        PACKAGES.join(" ")
    );
    if !quiet(Command::new("apt-get").arg("--version")) {
        return Err(Failure::new(format!(
            "missing system packages {need:?} and no apt-get here: install FFmpeg 5.1+ development libraries (libavcodec, libavformat, libavutil, libswscale), libclang, pkg-config, the ffmpeg tools, Open MPI (mpicc, mpirun) and Gloo's headers (libgloo-dev)"
        )));
    }
    let sudo: &[&str] = if is_root() {
        &[]
    } else if quiet(Command::new("sudo").args(["-n", "true"])) {
        &["sudo", "-n"]
    } else {
        return Err(Failure::new(format!(
            "missing system packages {need:?}; run as root: {install}"
        )));
    };
    println!("setup: installing system packages {need:?} with apt-get");
    let run = |args: &[&str]| -> bool {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        let mut cmd = Command::new(all[0]);
        cmd.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        if !verbose {
            cmd.stdout(Stdio::null());
        }
        cmd.status().is_ok_and(|s| s.success())
    };
    if !run(&["apt-get", "update", "-qq"]) {
        return Err(Failure::new(format!(
            "`apt-get update` failed (no network to the Debian mirrors?); then run: {install}"
        )));
    }
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend(PACKAGES);
    if !run(&args) {
        return Err(Failure::new(format!(
            "`apt-get install` failed (disk full or packages unavailable?); run: {install}"
        )));
    }
    let still = missing();
    if !still.is_empty() {
        return Err(Failure::new(format!(
            "after apt-get, still missing {still:?}; install them by hand"
        )));
    }
    Ok(())
}
