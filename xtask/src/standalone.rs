//! `cargo xtask standalone` (also the last step of `cargo xtask test`): the library crates as a
//! user picks them, one at a time, from a throw-away crate *outside* the workspace.
//!
//! For every crate in [`PICKS`] it writes `<tmp>/apt-rs-standalone-<pid>/uses-<crate>/` — a
//! package of its own (`[workspace]`) that depends on the crate by path, on `tch`/`torch-sys`
//! and, at build time, on `apt-build`, as the crate's README tells users to — with the README's
//! Rust example as `src/main.rs`. Then:
//!
//! 1. `cargo tree -e normal` must not list any of the crate's forbidden packages (FFmpeg,
//!    tokenizers and the pipeline for the method crates; the method crates for apt-data);
//! 2. `cargo build` must compile (warnings are errors) and link the README example there.
//!
//! The workspace's `Cargo.lock` is copied in and cargo runs `--offline` with the workspace's
//! `target/` and `LIBTORCH`, so nothing is downloaded and libtorch's bindings are not rebuilt.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{repo_root, Failure};

/// One library crate as a user picks it.
pub struct Pick {
    /// The crate (a directory under `crates/`).
    pub name: &'static str,
    /// Other workspace crates its README example uses (they must be in its graph anyway).
    pub with: &'static [&'static str],
    /// Packages its normal dependency graph must not contain.
    pub forbidden: &'static [&'static str],
}

const HEAVY: [&str; 3] = ["ffmpeg-next", "ffmpeg-sys-next", "tokenizers"];

/// The crates checked, with what each must not pull in.
pub const PICKS: &[Pick] = &[
    Pick {
        name: "apt-mmdit",
        with: &[],
        forbidden: &[
            HEAVY[0],
            HEAVY[1],
            HEAVY[2],
            "apt-data",
            "apt-flow",
            "apt-gan",
            "apt-pipeline",
        ],
    },
    Pick {
        name: "apt-flow",
        with: &["apt-mmdit"],
        forbidden: &[
            HEAVY[0],
            HEAVY[1],
            HEAVY[2],
            "apt-data",
            "apt-gan",
            "apt-pipeline",
        ],
    },
    Pick {
        name: "apt-gan",
        with: &[],
        forbidden: &[HEAVY[0], HEAVY[1], HEAVY[2], "apt-data", "apt-pipeline"],
    },
    Pick {
        name: "apt-dist",
        with: &["apt-flow"],
        forbidden: &[HEAVY[0], HEAVY[1], HEAVY[2], "apt-data", "apt-pipeline"],
    },
    Pick {
        name: "apt-data",
        with: &[],
        forbidden: &["apt-mmdit", "apt-flow", "apt-gan", "apt-pipeline"],
    },
    Pick {
        name: "apt-vae",
        with: &[],
        forbidden: &[
            HEAVY[0],
            HEAVY[1],
            HEAVY[2],
            "apt-data",
            "apt-flow",
            "apt-gan",
            "apt-pipeline",
        ],
    },
];

/// Runs the check for every crate in [`PICKS`].
pub fn check() -> Result<(), Failure> {
    let root = repo_root();
    let scratch = std::env::temp_dir().join(format!("apt-rs-standalone-{}", std::process::id()));
    let result = PICKS
        .iter()
        .try_for_each(|pick| check_one(&root, &scratch, pick));
    // Keep the throw-away crates when something failed, for a look.
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("xtask: the throw-away crates are in {}", scratch.display());
    }
    result
}

fn check_one(root: &Path, scratch: &Path, pick: &Pick) -> Result<(), Failure> {
    let dir = scratch.join(format!("uses-{}", pick.name));
    let readme = root.join("crates").join(pick.name).join("README.md");
    let text = read(&readme)?;
    let example = readme_example(&text).ok_or_else(|| {
        Failure::new(format!(
            "{}: no ```rust example to compile (every crate's README has one)",
            readme.display()
        ))
    })?;
    write(&dir.join("Cargo.toml"), &manifest(root, pick))?;
    write(
        &dir.join("build.rs"),
        "fn main() {\n    apt_build::link_libtorch();\n}\n",
    )?;
    // A user's project should see no warnings either.
    write(
        &dir.join("src/main.rs"),
        &format!("#![deny(warnings)]\n{example}"),
    )?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .map_err(|e| Failure::new(format!("copying Cargo.lock to {}: {e}", dir.display())))?;

    let tree = output(
        standalone_cargo(root, &dir).args(["tree", "-e", "normal", "--prefix", "none"]),
        &format!("cargo tree for a crate using {}", pick.name),
    )?;
    let packages = tree_packages(&tree);
    let pulled: Vec<&str> = pick
        .forbidden
        .iter()
        .copied()
        .filter(|f| packages.iter().any(|p| p == f))
        .collect();
    if !pulled.is_empty() {
        return Err(Failure::new(format!(
            "{} pulls in {} (normal dependencies, default features); it must not",
            pick.name,
            pulled.join(", ")
        )));
    }
    println!(
        "xtask: {} alone pulls in {} packages, none of: {}",
        pick.name,
        packages.len(),
        pick.forbidden.join(", ")
    );
    crate::run(
        standalone_cargo(root, &dir).args(["build", "--quiet"]),
        &format!(
            "building {}'s README example outside the workspace",
            pick.name
        ),
    )
}

/// `cargo` in a throw-away crate, offline, sharing the workspace's target directory and
/// libtorch (the same values the workspace's `.cargo/config.toml` gives, so nothing rebuilds).
fn standalone_cargo(root: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .arg("--offline");
    if std::env::var_os("LIBTORCH").is_none() {
        cmd.env("LIBTORCH", root.join(".libtorch"));
    }
    cmd
}

/// The throw-away crate's manifest: the picked crate (and what its example also names) by
/// path, `tch` and `torch-sys` at the workspace's versions, `apt-build` for `build.rs`.
fn manifest(root: &Path, pick: &Pick) -> String {
    let path = |name: &str| root.join("crates").join(name).display().to_string();
    let mut deps = format!("{} = {{ path = {:?} }}\n", pick.name, path(pick.name));
    for other in pick.with {
        deps += &format!("{other} = {{ path = {:?} }}\n", path(other));
    }
    format!(
        "[package]\nname = \"uses-{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\n{deps}tch = \"0.24\"\ntorch-sys = \"0.24\"\n\n\
         [build-dependencies]\napt-build = {{ path = {build:?} }}\n\n\
         # Not a member of the apt-rs workspace: a project of its own.\n[workspace]\n\n\
         # The workspace's debug settings, so the shared target/ reuses its dependencies.\n\
         [profile.dev]\ndebug = \"line-tables-only\"\n\n\
         [profile.dev.package.\"*\"]\ndebug = false\n",
        name = pick.name,
        build = path("apt-build"),
    )
}

/// The first ```` ```rust ```` block of a README (any attributes after `rust`), without fences.
pub fn readme_example(readme: &str) -> Option<String> {
    let mut lines = readme.lines();
    lines.find(|l| {
        let l = l.trim_start();
        l.starts_with("```rust")
    })?;
    let mut code = String::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            return Some(code);
        }
        code += line;
        code.push('\n');
    }
    None
}

/// Package names in `cargo tree --prefix none` output (one `name vX.Y.Z [(...)]` per line).
pub fn tree_packages(tree: &str) -> Vec<String> {
    let mut names: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("reading {}: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    let parent: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&parent)
        .and_then(|()| std::fs::write(path, text))
        .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))
}

fn output(cmd: &mut Command, what: &str) -> Result<String, Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(format!("{what}: cannot start: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rust_block_is_the_example() {
        let readme =
            "# x\n```toml\na = 1\n```\n```rust,no_run\nfn main() {}\n```\n```rust\nno\n```\n";
        assert_eq!(readme_example(readme).as_deref(), Some("fn main() {}\n"));
        assert_eq!(readme_example("```rust\nfn main() {}\n"), None);
        assert_eq!(readme_example("no code"), None);
    }

    #[test]
    fn tree_lines_give_unique_package_names() {
        let tree =
            "apt-gan v0.1.0 (/w/crates/apt-gan)\ntch v0.24.0\nserde v1.0.0\ntch v0.24.0 (*)\n\n";
        assert_eq!(tree_packages(tree), ["apt-gan", "serde", "tch"]);
    }

    #[test]
    fn every_library_crate_is_checked_and_has_a_readme_example() {
        let root = repo_root();
        for pick in PICKS {
            let readme =
                std::fs::read_to_string(root.join("crates").join(pick.name).join("README.md"))
                    .expect("README");
            assert!(
                readme_example(&readme).is_some(),
                "{} README example",
                pick.name
            );
            let manifest = manifest(&root, pick);
            assert!(manifest.contains("[workspace]"), "{manifest}");
        }
        let heavy_free = ["apt-mmdit", "apt-flow", "apt-gan"];
        for name in heavy_free {
            let pick = PICKS.iter().find(|p| p.name == name).expect(name);
            for heavy in HEAVY {
                assert!(
                    pick.forbidden.contains(&heavy),
                    "{name} must forbid {heavy}"
                );
            }
        }
    }
}
