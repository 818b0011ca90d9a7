//! `cargo xtask setup`: make the pinned libtorch available with no manual steps.
//!
//! PyTorch 2.11.0 (what `tch 0.24` expects) is installed from PyPI, with its dependencies,
//! into a Python virtual environment in a per-user cache outside the repository, so every
//! clone on the machine shares one 4.7 GB install. The repository's git-ignored `.libtorch`
//! link points at the `torch` package (or at `$LIBTORCH` when that is set), and
//! `.cargo/config.toml` passes it to `torch-sys`, so plain `cargo build` works afterwards.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{repo_root, Failure};

/// The PyTorch release `tch 0.24` is generated against.
pub const TORCH_VERSION: &str = "2.11.0";
/// Pinned reference packages (fixtures and benchmarks only; the product never imports them).
pub const REFERENCE_REQUIREMENTS: &[&str] = &[
    "diffusers==0.42.1",
    "numpy==2.4.6",
    "peft==0.22.0",
    "transformers==5.24.0",
];
/// Header-only wheels of the CUDA toolkit that PyTorch's `nvidia-*` dependencies leave out
/// and c10d's NCCL headers include (`crt/host_config.h`, CCCL's `nv/target`): with them
/// apt-dist builds its NCCL process group (pinned to the CUDA 13.0 that torch 2.11.0 uses).
pub const CUDA_HEADER_REQUIREMENTS: &[&str] =
    &["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];
const MARKER: &str = ".apt-rs-ready";
const NEEDED_FREE_GB: u64 = 6;

/// Where libtorch was found.
#[derive(Debug)]
pub struct Libtorch {
    /// The libtorch root (holds `lib/` and `include/`).
    pub root: PathBuf,
    /// The virtual environment's Python, when we manage the install.
    pub python: Option<PathBuf>,
}

/// The cache directory for the virtual environment: `$APT_TORCH_HOME`, else
/// `<cache root>/torch-2.11.0` (`~/.cache/apt-rs/torch-2.11.0` by default; see
/// `apt_build::cache_root`).
pub fn torch_home() -> Result<PathBuf, Failure> {
    if let Some(dir) = std::env::var_os("APT_TORCH_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    apt_build::cache_root()
        .map(|c| c.join(format!("torch-{TORCH_VERSION}")))
        .ok_or_else(|| Failure::new("none of APT_TORCH_HOME, APT_CACHE_HOME, XDG_CACHE_HOME, HOME is set: set APT_TORCH_HOME to a directory for the PyTorch install"))
}

/// Everything the workspace needs: system packages (FFmpeg libraries and tools), libtorch
/// linked from `.libtorch`, and the test assets. Fast when already done.
pub fn setup(verbose: bool) -> Result<Libtorch, Failure> {
    crate::system::ensure(verbose)?;
    let lib = setup_libtorch(verbose)?;
    crate::assets::ensure(&find_python()?)?;
    Ok(lib)
}

/// Ensures libtorch is installed and linked from `.libtorch`; fast when already done.
pub fn setup_libtorch(verbose: bool) -> Result<Libtorch, Failure> {
    // `.cargo/config.toml` itself sets LIBTORCH to the repository's `.libtorch` link for every
    // process cargo starts (this one included): only a different value is the user's own.
    let own_link = repo_root().join(".libtorch");
    let user_libtorch =
        std::env::var_os("LIBTORCH").filter(|d| !d.is_empty() && Path::new(d) != own_link);
    let lib = match user_libtorch {
        Some(root) => {
            let root = PathBuf::from(root);
            check_libtorch_dir(&root).map_err(|why| Failure::new(format!("LIBTORCH={} {why}; unset LIBTORCH to let `cargo xtask setup` install PyTorch {TORCH_VERSION}", root.display())))?;
            Libtorch { root, python: None }
        }
        None => ensure_venv(verbose)?,
    };
    ensure_cuda_headers(&lib);
    link_into_repo(&lib.root)?;
    if verbose {
        println!(
            "libtorch: {} (PyTorch {})",
            lib.root.display(),
            read_torch_version(&lib.root).unwrap_or_else(|| "version unknown".into())
        );
    }
    Ok(lib)
}

/// `Ok` when `root` looks like libtorch (shared libraries and headers).
fn check_libtorch_dir(root: &Path) -> Result<(), String> {
    if !root.join("lib").join("libtorch_cpu.so").is_file() {
        return Err("does not look like libtorch (no lib/libtorch_cpu.so)".into());
    }
    if !root.join("include").join("torch").is_dir() {
        return Err("has no include/torch headers".into());
    }
    Ok(())
}

/// `__version__` from `torch/version.py` (PyPI) or `build-version` (standalone libtorch).
pub fn read_torch_version(root: &Path) -> Option<String> {
    apt_build::torch_version(root)
}

fn venv_torch_dir(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|p| p.join("site-packages").join("torch"))
        .find(|t| t.join("lib").join("libtorch_cpu.so").is_file())
}

fn installed(venv: &Path) -> Option<Libtorch> {
    let marker = fs::read_to_string(venv.join(MARKER)).ok()?;
    if marker.trim() != format!("torch=={TORCH_VERSION}") {
        return None;
    }
    let root = venv_torch_dir(venv)?;
    let version = read_torch_version(&root)?;
    (version.split('+').next() == Some(TORCH_VERSION)).then(|| Libtorch {
        root,
        python: Some(venv.join("bin").join("python")),
    })
}

fn ensure_venv(verbose: bool) -> Result<Libtorch, Failure> {
    let venv = torch_home()?;
    if let Some(lib) = installed(&venv) {
        return Ok(lib);
    }
    let parent = venv.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| {
        Failure::new(format!(
            "cannot create {}: {e}; set APT_TORCH_HOME to a writable directory",
            parent.display()
        ))
    })?;
    // One installer at a time per machine (parallel CI clones share the cache).
    let lock_path = parent.join(format!("torch-{TORCH_VERSION}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Failure::new(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| Failure::new(format!("cannot lock {}: {e}", lock_path.display())))?;
    if let Some(lib) = installed(&venv) {
        return Ok(lib);
    }
    check_free_space(parent)?;
    let python = find_python()?;
    if !venv.join("bin").join("python").exists() {
        println!(
            "setup: creating a Python virtual environment in {}",
            venv.display()
        );
        let status = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            return Err(Failure::new(format!(
                "`{python} -m venv {}` failed: install the venv module (Debian/Ubuntu: apt-get install python3-venv) or set LIBTORCH to an existing libtorch",
                venv.display()
            )));
        }
    }
    println!("setup: installing torch=={TORCH_VERSION} from PyPI into {} (about 4.7 GB, a few minutes; once per machine)", venv.display());
    pip_install(&venv, &[&format!("torch=={TORCH_VERSION}")], verbose)?;
    let lib = venv_torch_dir(&venv).ok_or_else(|| {
        Failure::new(format!(
            "pip finished but {} holds no torch/lib/libtorch_cpu.so",
            venv.display()
        ))
    })?;
    let version = read_torch_version(&lib).unwrap_or_default();
    if version.split('+').next() != Some(TORCH_VERSION) {
        return Err(Failure::new(format!(
            "{} has PyTorch {version:?}, expected {TORCH_VERSION}; delete {} and rerun",
            lib.display(),
            venv.display()
        )));
    }
    fs::write(venv.join(MARKER), format!("torch=={TORCH_VERSION}\n")).map_err(|e| {
        Failure::new(format!(
            "cannot write the marker in {}: {e}",
            venv.display()
        ))
    })?;
    drop(lock);
    Ok(installed(&venv).expect("just installed"))
}

pub(crate) fn find_python() -> Result<String, Failure> {
    let python = std::env::var("APT_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(python),
        _ => Err(Failure::new(format!(
            "`{python}` was not found: install Python 3.10+ with venv (Debian/Ubuntu: apt-get install python3 python3-venv), set APT_PYTHON to one, or set LIBTORCH to an existing libtorch {TORCH_VERSION}"
        ))),
    }
}

/// Free space in GB where the install goes, from `df` (None when unknown).
fn free_gb(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb / (1024 * 1024))
}

fn check_free_space(dir: &Path) -> Result<(), Failure> {
    match free_gb(dir) {
        Some(gb) if gb < NEEDED_FREE_GB => Err(Failure::new(format!(
            "only {gb} GB free in {}: PyTorch {TORCH_VERSION} needs about {NEEDED_FREE_GB} GB; free some space or set APT_TORCH_HOME to a disk that has it",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// `pip install` into the venv, logging to `<venv>/pip-install.log`; on failure, one message
/// saying what went wrong and what to do.
pub fn pip_install(venv: &Path, packages: &[&str], verbose: bool) -> Result<(), Failure> {
    let log_path = venv.join("pip-install.log");
    let log = File::create(&log_path)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| Failure::new(e.to_string()))?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
    ])
    .args(packages);
    if verbose {
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        cmd.stdout(log).stderr(log2);
    }
    let status = cmd
        .status()
        .map_err(|e| Failure::new(format!("cannot run pip in {}: {e}", venv.display())))?;
    if status.success() {
        return Ok(());
    }
    let why = diagnose_pip_log(&fs::read_to_string(&log_path).unwrap_or_default());
    Err(Failure::new(format!(
        "pip could not install {}: {why} (log: {})",
        packages.join(" "),
        log_path.display()
    )))
}

/// What to tell the user about a failed `pip install`, judging from its log.
fn diagnose_pip_log(text: &str) -> String {
    if text.contains("No space left on device") {
        format!("the disk is full; free about {NEEDED_FREE_GB} GB or set APT_TORCH_HOME to another disk")
    } else if [
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "ConnectionError",
        "Max retries exceeded",
        "Network is unreachable",
    ]
    .iter()
    .any(|s| text.contains(s))
    {
        "PyPI could not be reached; check the network (or PIP_INDEX_URL / proxy settings) and rerun"
            .to_string()
    } else if text.contains("No matching distribution") || text.contains("Could not find a version")
    {
        "PyPI has no matching wheel for this Python/platform; use Python 3.10-3.13 on x86_64/aarch64 Linux, or set LIBTORCH to an existing libtorch".to_string()
    } else {
        "see the log".to_string()
    }
}

/// Points the repository's `.libtorch` link at `root` (replacing it atomically when it differs).
fn link_into_repo(root: &Path) -> Result<(), Failure> {
    let link = repo_root().join(".libtorch");
    if fs::read_link(&link).ok().as_deref() == Some(root) {
        return Ok(());
    }
    let tmp = repo_root().join(format!(".libtorch.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(root, &tmp)
        .and_then(|()| fs::rename(&tmp, &link))
        .map_err(|e| {
            Failure::new(format!(
                "cannot link {} -> {}: {e}",
                link.display(),
                root.display()
            ))
        })
}

/// Installs [`CUDA_HEADER_REQUIREMENTS`] into the managed venv of a CUDA PyTorch when missing,
/// so that apt-dist builds NCCL groups. Optional: a failure is a note, not an error (the build
/// then has Gloo and MPI only).
fn ensure_cuda_headers(lib: &Libtorch) {
    let Some(python) = &lib.python else { return };
    if !lib.root.join("lib/libtorch_cuda.so").is_file() {
        return;
    }
    let venv = python
        .parent()
        .and_then(Path::parent)
        .expect("venv/bin/python");
    let stamp = venv.join(".apt-rs-cuda-headers");
    let want = CUDA_HEADER_REQUIREMENTS.join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return;
    }
    println!(
        "setup: installing the CUDA headers NCCL needs ({}) into {}",
        CUDA_HEADER_REQUIREMENTS.join(" "),
        venv.display()
    );
    let mut packages = vec!["--no-deps"];
    packages.extend(CUDA_HEADER_REQUIREMENTS);
    match pip_install(venv, &packages, false) {
        Ok(()) => {
            let _ = fs::write(&stamp, &want);
        }
        Err(e) => println!("setup: note: {}; apt will be built without NCCL", e.0),
    }
}

/// Installs the pinned reference packages (diffusers) into the managed venv when missing.
pub fn ensure_reference_packages(lib: &Libtorch) -> Result<PathBuf, Failure> {
    let Some(python) = &lib.python else {
        return Err(Failure::new("fixtures and benchmarks need the managed PyTorch virtual environment: unset LIBTORCH and run `cargo xtask setup`"));
    };
    let venv = python
        .parent()
        .and_then(Path::parent)
        .expect("venv/bin/python");
    let stamp = venv.join(".apt-rs-reference");
    let want = REFERENCE_REQUIREMENTS.join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        println!(
            "setup: installing {} into {}",
            REFERENCE_REQUIREMENTS.join(" "),
            venv.display()
        );
        pip_install(venv, REFERENCE_REQUIREMENTS, false)?;
        fs::write(&stamp, &want)
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", stamp.display())))?;
    }
    Ok(python.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_failures_get_a_cause_and_a_remedy() {
        assert!(
            diagnose_pip_log("OSError: [Errno 28] No space left on device")
                .contains("disk is full")
        );
        assert!(
            diagnose_pip_log("WARNING: Retrying ... Failed to establish a new connection")
                .contains("network")
        );
        assert!(
            diagnose_pip_log("ERROR: No matching distribution found for torch==2.11.0")
                .contains("no matching wheel")
        );
        assert_eq!(diagnose_pip_log("something else"), "see the log");
    }
}
