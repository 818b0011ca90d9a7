//! Build and environment helpers shared by every apt-rs crate that builds tch binaries, tests
//! or benches, by `xtask` and by the CLI: libtorch linking, the PyTorch version of a libtorch
//! directory, and the per-user cache locations.
//!
//! Cargo links `libtorch.so` with `--as-needed`, which drops `libtorch_cuda.so` (CUDA is then
//! never found on a GPU machine), and the final binaries get no run-time search path, so they
//! fail to start with "libtorch_cpu.so: cannot open shared object file". Link arguments printed
//! by a *library* crate do not reach downstream binaries, so each crate that produces binaries
//! calls this helper from its own `build.rs`:
//!
//! ```text
//! // build.rs (the crate must also depend directly on `torch-sys`, which declares
//! // `links = "tch"`, so that `DEP_TCH_LIBTORCH_LIB` is visible here)
//! fn main() {
//!     apt_build::link_libtorch();
//! }
//! ```
//!
//! The helper prints `-Wl,-rpath=<libtorch lib dir>`, `-Wl,--no-as-needed` and `-ltorch`.
//! `LD_LIBRARY_PATH` still wins over the rpath (it is emitted as `DT_RUNPATH`), which is how a
//! binary built here runs against another machine's own libtorch.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// apt-rs's per-user cache (shared by every clone on the machine): `$APT_CACHE_HOME`, else
/// `$XDG_CACHE_HOME/apt-rs`, else `~/.cache/apt-rs`. `None` when none of those is set.
pub fn cache_root() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("APT_CACHE_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("apt-rs")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("apt-rs")))
}

/// Where `cargo xtask setup` puts test clips and model files fetched from PyPI and Debian:
/// `$APT_ASSETS_HOME`, else `<cache_root>/assets`.
pub fn assets_dir() -> Option<PathBuf> {
    std::env::var_os("APT_ASSETS_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| cache_root().map(|c| c.join("assets")))
}

/// The PyTorch release the pinned `tch` (0.24) was generated against.
pub const EXPECTED_TORCH_VERSION: &str = "2.11.0";

/// Emits the link arguments described in the crate docs. Panics with a clear message when
/// `torch-sys` did not report a libtorch directory (the crate does not depend on it directly).
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        panic!(
            "apt-build: DEP_TCH_LIBTORCH_LIB is not set; the crate calling link_libtorch() must \
             depend directly on `torch-sys` (it declares links = \"tch\")"
        );
    };
    let lib_dir = resolve(Path::new(&lib_dir));
    if let Some(version) = torch_version_of_lib(&lib_dir) {
        let release = version.split('+').next().unwrap_or(&version);
        if release != EXPECTED_TORCH_VERSION {
            println!(
                "cargo:warning=libtorch at {} is PyTorch {version}, tch 0.24 expects \
                 {EXPECTED_TORCH_VERSION}; run `cargo xtask setup`",
                lib_dir.display()
            );
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

/// Follows symbolic links (the repository's `.libtorch` link points into a per-user cache), so
/// binaries keep working when the checkout moves.
fn resolve(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The PyTorch version of a libtorch root (the directory holding `lib/` and `include/`):
/// `version.py` for a PyPI `torch` package, `build-version` for a standalone libtorch archive.
/// Read as text, without importing Python.
pub fn torch_version(root: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        return parse_version_py(&text);
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn torch_version_of_lib(lib_dir: &Path) -> Option<String> {
    torch_version(lib_dir.parent()?)
}

/// Extracts `__version__ = '…'` from the text of `torch/version.py`.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?.trim_start();
        let value = rest.strip_prefix('=')?.trim();
        Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wheel_version_line() {
        let text = "__all__ = ['__version__']\n__version__ = '2.11.0+cu130'\ndebug = False\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.11.0+cu130"));
        assert_eq!(parse_version_py("nothing here"), None);
    }

    #[test]
    fn versions_come_from_version_py_or_build_version() {
        let dir = std::env::temp_dir().join(format!("apt-build-version-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(torch_version(&dir), None);
        std::fs::write(dir.join("build-version"), "2.11.0+cpu\n").unwrap();
        assert_eq!(torch_version(&dir).as_deref(), Some("2.11.0+cpu"));
        std::fs::write(dir.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        assert_eq!(torch_version(&dir).as_deref(), Some("2.11.0+cu130"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
