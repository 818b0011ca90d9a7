//! Writing a moving-shapes data set as real files: one H.264 mp4 and one caption `.txt` per
//! clip (so it also exercises the folder data path), `attributes.jsonl` with the ground truth
//! and `shapes.json` with the config that made it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ShapeAttributes, ShapesConfig, Split};
use crate::error::{DataError, Result};
use crate::write::write_video;

/// One line of `attributes.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedClip {
    /// Video file name, relative to the folder.
    pub file: String,
    /// The caption (also in the sidecar `.txt`).
    pub caption: String,
    /// Ground truth.
    pub shapes: Vec<ShapeAttributes>,
}

/// Renders samples `0..count` of `(config, seed, split)` into `dir` at `fps`, calling
/// `progress(i)` after each clip. Existing files of the same names are replaced.
pub fn write_folder(
    config: &ShapesConfig,
    seed: u64,
    split: Split,
    count: usize,
    fps: f64,
    dir: &Path,
    mut progress: impl FnMut(usize),
) -> Result<Vec<PathBuf>> {
    config.validate()?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| DataError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let meta = serde_json::json!({ "config": config, "seed": seed, "split": split, "count": count, "fps": fps });
    let meta_path = dir.join("shapes.json");
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).expect("serialisable"),
    )
    .map_err(io(&meta_path))?;
    let jsonl_path = dir.join("attributes.jsonl");
    let mut jsonl =
        std::io::BufWriter::new(std::fs::File::create(&jsonl_path).map_err(io(&jsonl_path))?);
    let width = count.saturating_sub(1).to_string().len().max(5);
    let mut files = Vec::with_capacity(count);
    for i in 0..count {
        let sample = config.sample(seed, i as u64, split)?;
        let name = format!("clip_{i:0width$}");
        let video = dir.join(format!("{name}.mp4"));
        write_video(&video, &sample.video, fps)?;
        let caption = dir.join(format!("{name}.txt"));
        std::fs::write(&caption, format!("{}\n", sample.caption)).map_err(io(&caption))?;
        let line = ExportedClip {
            file: format!("{name}.mp4"),
            caption: sample.caption,
            shapes: sample.shapes,
        };
        writeln!(
            jsonl,
            "{}",
            serde_json::to_string(&line).expect("serialisable")
        )
        .map_err(io(&jsonl_path))?;
        files.push(video);
        progress(i);
    }
    jsonl.flush().map_err(io(&jsonl_path))?;
    Ok(files)
}
