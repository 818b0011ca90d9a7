//! One process per run directory: an exclusive advisory lock (`flock`) on `<run>/.lock`, which
//! holds the holder's process id. The kernel drops the lock when the process ends, however it
//! ends, so a lock left by a killed process never blocks the next run.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{io_error, PipelineError, Result};
use crate::run_dir::RunDir;

/// The held lock of a run directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or fails at once naming the holder's pid.
    pub fn acquire(dir: &RunDir) -> Result<Self> {
        let path = dir.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(PipelineError::Locked {
                    dir: dir.root().to_path_buf(),
                    pid: match pid.trim() {
                        "" => "unknown".into(),
                        p => p.to_string(),
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(&path)(e)),
        }
        write_pid(&mut file, &path)?;
        Ok(Self { _file: file })
    }
}

fn write_pid(file: &mut File, path: &Path) -> Result<()> {
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let held = RunLock::acquire(&run).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        RunLock::acquire(&run).unwrap();
    }
}
