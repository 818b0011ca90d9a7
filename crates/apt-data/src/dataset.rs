//! Data sets on disk: a folder of videos/images with sidecar `.txt` captions, or a JSONL
//! manifest whose lines are `{"path", "caption", ["embedding"]}` or, for precomputed VAE
//! latents (how production systems feed large models), `{"latents", "caption",
//! ["embedding"]}`. Relative paths are relative to the manifest. `embedding` points at a
//! safetensors file with `context` `[L, D]` and `pooled` `[D]` from any text encoder.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::clip::{load_clip_seeking, ClipSpec, Placement};
use crate::error::{DataError, Result};
use crate::index;
use crate::text::TextEmbedding;

/// File extensions read as videos or images.
pub const MEDIA_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ogv", "gif", "png", "jpg", "jpeg",
];

/// What to do with a sample that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBadSample {
    /// Skip it (counted and listed in the stats) and take the next one.
    #[default]
    Skip,
    /// Stop with its error.
    Fail,
}

/// Where a sample's pixels come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// A video or image file, decoded and cut to a clip.
    Video(PathBuf),
    /// A safetensors file with one `[C, T, H, W]` tensor made by a VAE; no decoding.
    Latents(PathBuf),
}

/// One entry of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The pixels or latents.
    pub media: Media,
    /// The caption.
    pub caption: String,
    /// Precomputed text embedding (`context`, `pooled`), if any.
    pub embedding: Option<PathBuf>,
}

/// An entry that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The file or `manifest:line`.
    pub what: String,
    /// Why.
    pub reason: String,
}

/// A list of items plus what was skipped while reading the list.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// The usable entries, in a stable order.
    pub items: Vec<Item>,
    /// Entries rejected while reading the folder or manifest (policy [`OnBadSample::Skip`]).
    pub skipped: Vec<Skipped>,
}

/// A loaded sample.
#[derive(Debug)]
pub struct Sample {
    /// `[C, T, H, W]`: RGB in [-1, 1] for videos, the stored tensor for latents.
    pub video: Tensor,
    /// The caption.
    pub caption: String,
    /// The precomputed text embedding, when the item has one.
    pub embedding: Option<TextEmbedding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestLine {
    path: Option<PathBuf>,
    latents: Option<PathBuf>,
    caption: String,
    embedding: Option<PathBuf>,
}

fn is_media(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MEDIA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

impl Dataset {
    /// A folder (every media file with a sidecar caption) or a `.jsonl` manifest.
    pub fn open(path: impl AsRef<Path>, policy: OnBadSample) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_folder(path, policy)
        } else {
            Self::from_manifest(path, policy)
        }
    }

    /// Every media file in `dir` (sorted by name, not recursive) with its `<stem>.txt` caption.
    pub fn from_folder(dir: &Path, policy: OnBadSample) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_media(p))
            .collect();
        paths.sort();
        let mut set = Dataset::default();
        for file in paths {
            // Follows links: a dangling link or a link loop is a bad sample, not a silent gap.
            match std::fs::metadata(&file) {
                Ok(m) if m.is_file() => {}
                Ok(_) => continue, // a directory with a media extension
                Err(e) => {
                    let reason = format!("unreadable ({e})");
                    if policy == OnBadSample::Fail {
                        return Err(DataError::Dataset { path: file, reason });
                    }
                    set.skipped.push(Skipped {
                        what: file.display().to_string(),
                        reason,
                    });
                    continue;
                }
            }
            let sidecar = file.with_extension("txt");
            match std::fs::read_to_string(&sidecar) {
                Ok(text) => set.items.push(Item {
                    media: Media::Video(file),
                    caption: text.trim().to_string(),
                    embedding: None,
                }),
                Err(e) => {
                    let reason = format!("no readable caption file {} ({e})", sidecar.display());
                    if policy == OnBadSample::Fail {
                        return Err(DataError::Dataset { path: file, reason });
                    }
                    set.skipped.push(Skipped {
                        what: file.display().to_string(),
                        reason,
                    });
                }
            }
        }
        if set.items.is_empty() {
            return Err(DataError::Dataset {
                path: dir.to_path_buf(),
                reason: format!(
                    "no usable media files ({} skipped; extensions: {})",
                    set.skipped.len(),
                    MEDIA_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(set)
    }

    /// A JSONL manifest; relative paths are resolved against its folder and must exist.
    pub fn from_manifest(path: &Path, policy: OnBadSample) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut set = Dataset::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", path.display(), n + 1);
            match parse_line(line, base) {
                Ok(item) => set.items.push(item),
                Err(reason) => {
                    if policy == OnBadSample::Fail {
                        return Err(DataError::Dataset {
                            path: PathBuf::from(at),
                            reason,
                        });
                    }
                    set.skipped.push(Skipped { what: at, reason });
                }
            }
        }
        if set.items.is_empty() {
            return Err(DataError::Dataset {
                path: path.to_path_buf(),
                reason: format!("no usable lines ({} skipped)", set.skipped.len()),
            });
        }
        Ok(set)
    }

    /// Only the items for which `keep` is true (e.g. videos only for a video stage).
    pub fn filter(&self, keep: impl Fn(&Item) -> bool) -> Self {
        Self {
            items: self.items.iter().filter(|i| keep(i)).cloned().collect(),
            skipped: self.skipped.clone(),
        }
    }

    /// Unique captions, sorted (what a text-embedding cache needs to hold).
    pub fn captions(&self) -> BTreeSet<&str> {
        self.items.iter().map(|i| i.caption.as_str()).collect()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there is no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn parse_line(line: &str, base: &Path) -> std::result::Result<Item, String> {
    let raw: ManifestLine = serde_json::from_str(line)
        .map_err(|e| format!("not a JSON object with path|latents, caption[, embedding]: {e}"))?;
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let media =
        match (raw.path, raw.latents) {
            (Some(p), None) => Media::Video(resolve(p)),
            (None, Some(p)) => Media::Latents(resolve(p)),
            _ => return Err(
                "needs exactly one of `path` (a video/image) and `latents` (a safetensors tensor)"
                    .into(),
            ),
        };
    let file = match &media {
        Media::Video(p) | Media::Latents(p) => p.clone(),
    };
    if !file.is_file() {
        return Err(format!("{} does not exist", file.display()));
    }
    let embedding = raw.embedding.map(resolve);
    if let Some(e) = &embedding {
        if !e.is_file() {
            return Err(format!("embedding {} does not exist", e.display()));
        }
    }
    Ok(Item {
        media,
        caption: raw.caption,
        embedding,
    })
}

/// Reads a precomputed embedding file (`context` `[L, D]`, `pooled` `[D]`).
pub fn read_embedding(path: &Path) -> Result<TextEmbedding> {
    let bad = |reason: String| DataError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
        .into_iter()
        .collect();
    match (t.get("context"), t.get("pooled")) {
        (Some(c), Some(p)) if c.dim() == 2 && p.dim() == 1 && c.size()[1] == p.size()[0] => {
            Ok(TextEmbedding {
                context: c.to_kind(tch::Kind::Float),
                pooled: p.to_kind(tch::Kind::Float),
            })
        }
        _ => Err(bad(
            "expected tensors `context` [L, D] and `pooled` [D]".into()
        )),
    }
}

/// Reads a latents file: its single tensor (or the one named `latents`), `[C, T, H, W]`, and
/// cuts `num_frames` latent frames (random or centred window).
pub fn read_latents(path: &Path, spec: &ClipSpec, rng: &mut impl Rng) -> Result<Tensor> {
    let bad = |reason: String| DataError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let mut t = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
    let latents = match t.iter().position(|(k, _)| k == "latents") {
        Some(i) => t.swap_remove(i).1,
        None if t.len() == 1 => t.pop().expect("one").1,
        None => {
            return Err(bad(format!(
                "expected one tensor (or one named `latents`), found {}",
                t.len()
            )))
        }
    };
    if latents.dim() != 4 {
        return Err(bad(format!(
            "latents must be [C, T, H, W], got {:?}",
            latents.size()
        )));
    }
    let frames = latents.size()[1] as usize;
    if frames < spec.num_frames {
        return Err(DataError::TooShort {
            path: path.to_path_buf(),
            frames,
            needed: spec.num_frames,
        });
    }
    let last = frames - spec.num_frames;
    let start = match spec.offset {
        Placement::Center => last / 2,
        Placement::Random => rng.gen_range(0..=last),
    };
    Ok(latents
        .narrow(1, start as i64, spec.num_frames as i64)
        .to_kind(tch::Kind::Float))
}

impl Item {
    /// Loads the sample: decodes and cuts the clip (or reads the latents) and the embedding.
    pub fn load(&self, spec: &ClipSpec, rng: &mut impl Rng) -> Result<Sample> {
        let video = match &self.media {
            Media::Video(p) => {
                // The file's index says which frames the clip needs: decoding stops after them.
                let entry = index::lookup(p);
                let known = entry.as_ref().map(|e| (e.frames, e.fps));
                let seek = entry.as_ref().and_then(|e| e.seek.as_ref());
                let clip = load_clip_seeking(p, spec, rng, known, seek)?;
                if known.is_none() {
                    index::store(p, &clip.source, clip.seek_index.as_ref());
                }
                clip.video
            }
            Media::Latents(p) => read_latents(p, spec, rng)?,
        };
        let embedding = self.embedding.as_deref().map(read_embedding).transpose()?;
        Ok(Sample {
            video,
            caption: self.caption.clone(),
            embedding,
        })
    }

    /// The file behind this item.
    pub fn path(&self) -> &Path {
        match &self.media {
            Media::Video(p) | Media::Latents(p) => p,
        }
    }
}
