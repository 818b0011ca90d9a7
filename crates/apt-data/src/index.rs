//! A per-file video index, built by the first full decode of a file and cached on disk: its
//! decoded frame count and frame rate, so that later clips know which frames they need before
//! decoding and stop after the last one ([`crate::decode_frames_until`]), and every frame's
//! timestamp with the key frames ([`SeekIndex`]), so that they start at the key frame before
//! the clip ([`crate::seek`]).
//!
//! The index of `dir/clip.mp4` lives in `dir/.apt-index/clip.mp4.json` (next to the data set),
//! or, when that directory cannot be written, under the user cache (`<cache>/video-index/`).
//! An entry is used only while the file's size and modification time are those it recorded;
//! a changed file is decoded in full again and re-indexed. Writes are atomic, so concurrent
//! loader workers and ranks at worst index a file twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::frames::{SeekIndex, VideoInfo};

/// Directory, next to the videos, that holds their index entries.
pub const INDEX_DIR: &str = ".apt-index";

/// The version of what an entry records; entries of another version are rebuilt. 2: key
/// frames verified with a decoder primed on the first packet ([`crate::seek`]), which admits
/// entry points that version 1 left out.
pub const INDEX_VERSION: u32 = 2;

/// What is known about one video file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// [`INDEX_VERSION`] when written (entries without one are version 1).
    #[serde(default = "version_one")]
    pub version: u32,
    /// Frames decoded from start to end.
    pub frames: usize,
    /// Frames per second (as [`VideoInfo::fps`]).
    pub fps: f64,
    /// File size in bytes when indexed.
    pub size: u64,
    /// Modification time (ns since the Unix epoch) when indexed.
    pub modified_ns: u128,
    /// Every frame's timestamp and the key frames, when the file's timestamps allow seeking.
    #[serde(default)]
    pub seek: Option<SeekIndex>,
}

fn version_one() -> u32 {
    1
}

/// `(size, modification time in ns)` of `path`.
fn stamp(path: &Path) -> Option<(u64, u128)> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((meta.len(), modified.as_nanos()))
}

/// Where the entry of `video` is kept: next to it, else in the user cache.
fn entry_paths(video: &Path) -> Vec<PathBuf> {
    let name = video
        .file_name()
        .map(|n| format!("{}.json", n.to_string_lossy()))
        .unwrap_or_else(|| "video.json".into());
    let mut paths = Vec::new();
    if let Some(dir) = video.parent() {
        paths.push(dir.join(INDEX_DIR).join(&name));
    }
    if let Some(cache) = apt_build::cache_root() {
        let absolute = std::fs::canonicalize(video).unwrap_or_else(|_| video.to_path_buf());
        let key = absolute
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        paths.push(cache.join("video-index").join(format!("{key:016x}-{name}")));
    }
    paths
}

/// The cached index of `video`, when there is one for the file as it is now.
pub fn lookup(video: &Path) -> Option<IndexEntry> {
    let (size, modified_ns) = stamp(video)?;
    entry_paths(video).into_iter().find_map(|p| {
        let entry: IndexEntry = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        let current = entry.version == INDEX_VERSION;
        (current && entry.size == size && entry.modified_ns == modified_ns && entry.frames > 0)
            .then_some(entry)
    })
}

/// Records what a full decode of `video` found. Best effort: an index that cannot be written
/// only costs a full decode next time.
pub fn store(video: &Path, info: &VideoInfo, seek: Option<&SeekIndex>) {
    let Some((size, modified_ns)) = stamp(video) else {
        return;
    };
    let entry = IndexEntry {
        version: INDEX_VERSION,
        frames: info.frames,
        fps: info.fps,
        size,
        modified_ns,
        seek: seek.cloned(),
    };
    let text = serde_json::to_string_pretty(&entry).expect("index entries serialise");
    for path in entry_paths(video) {
        let written = path
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && write_atomically(&path, text.as_bytes()).is_ok();
        if written {
            return;
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` (unique per process and call) and renames
/// it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
