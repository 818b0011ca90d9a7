//! Temporary files left by a process that died while writing. Every file apt-rs writes goes
//! through a temporary sibling named after the writing process (`.NAME.tmp-PID`,
//! `NAME.tmp-PID` in the text cache, `.NAME.tmp-PID.EXT` for videos) and is renamed into place
//! when complete; a `kill -9` mid-write leaves the temporary behind, megabytes for a
//! checkpoint. Whoever claims a run directory next removes those of dead processes.

use std::path::{Path, PathBuf};

/// The process id in the name of a temporary file apt-rs writes, `None` for any other name.
fn temp_owner(name: &str) -> Option<u32> {
    let at = name.rfind(".tmp-")?;
    let tail = &name[at + ".tmp-".len()..];
    let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &tail[digits..];
    // Nothing after the id, or one extension (`.mp4`).
    let plain = rest.is_empty() || (rest.starts_with('.') && !rest[1..].contains('.'));
    if digits == 0 || !plain {
        return None;
    }
    tail[..digits].parse().ok()
}

/// Whether process `pid` is running (on a system without `/proc`, every process counts as
/// running: nothing is removed).
fn is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes, under `dir` (recursively, not following links), the temporary files whose writer
/// is no longer running; returns them.
pub fn remove_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            let dead_writer =
                temp_owner(&name.to_string_lossy()).is_some_and(|pid| !is_running(pid));
            if kind.is_file() && dead_writer && std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            count = removed.len(),
            dir = %dir.display(),
            "removed temporary files of processes that died while writing"
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_their_writer() {
        assert_eq!(temp_owner(".step-000020.safetensors.tmp-4242"), Some(4242));
        assert_eq!(temp_owner("0123abcd.tmp-17"), Some(17));
        assert_eq!(temp_owner(".red.tmp-99.mp4"), Some(99));
        for other in [
            "teacher.safetensors",
            "notes.tmp-x",
            ".a.tmp-12.tar.gz",
            "a.tmp-",
        ] {
            assert_eq!(temp_owner(other), None, "{other}");
        }
    }

    #[test]
    fn only_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("pretrain/checkpoints");
        std::fs::create_dir_all(&nested).unwrap();
        // No process has this id (Linux caps ids at 2^22).
        let dead = nested.join(".step-000002.safetensors.tmp-99999999");
        let alive = nested.join(format!(
            ".step-000004.safetensors.tmp-{}",
            std::process::id()
        ));
        let kept = nested.join("step-000002.safetensors");
        for f in [&dead, &alive, &kept] {
            std::fs::write(f, b"x").unwrap();
        }
        let removed = remove_stale_temp_files(dir.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && alive.exists() && kept.exists());
    }
}
