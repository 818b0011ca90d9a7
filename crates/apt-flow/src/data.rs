//! Where training clips come from: the moving-shapes benchmark rendered on the fly (sample `i`
//! is a pure function of the seed and `i`, so the cursor is just a counter), or a folder /
//! manifest through the loader (with its own cursor).

use apt_data::shapes::{ShapesConfig, Split};
use apt_data::{ClipSpec, Cursor, Dataset, Loader, LoaderConfig, OnBadSample};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{config_error, Result};

/// The `[data]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// Moving shapes, rendered on the fly.
    Shapes {
        /// The benchmark's config (frames, size, shapes, speeds, held-out pairs).
        shapes: ShapesConfig,
        /// Data-set seed (training uses split `train`).
        #[serde(default)]
        seed: u64,
    },
    /// A folder with caption sidecars or a JSONL manifest.
    Files {
        /// Folder or manifest path.
        path: std::path::PathBuf,
        /// Clip to cut (frames, stride/fps, size; random offset and crop for training).
        clip: ClipSpec,
        /// Decoding threads.
        #[serde(default = "two")]
        workers: usize,
        /// What to do with unreadable files.
        #[serde(default)]
        on_bad_sample: OnBadSample,
    },
}

impl DataConfig {
    /// Checks the values (the files themselves are opened when a stage starts).
    pub fn validate(&self) -> Result<()> {
        match self {
            DataConfig::Shapes { shapes, .. } => Ok(shapes.validate()?),
            DataConfig::Files { clip, workers, .. } => {
                if *workers == 0 {
                    return Err(config_error("data.workers", "must be at least 1"));
                }
                Ok(clip.validate()?)
            }
        }
    }
}

fn two() -> usize {
    2
}

/// A stream of `(clips [B, C, T, H, W], captions)` with a resumable cursor.
pub enum TrainData {
    /// Rendered shapes; the cursor's `position` counts samples drawn.
    Shapes {
        /// Benchmark config.
        config: ShapesConfig,
        /// Data-set seed.
        seed: u64,
        /// Next sample index.
        next: u64,
    },
    /// Files through the loader.
    Files(Box<Loader>),
}

impl std::fmt::Debug for TrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainData::Shapes { seed, next, .. } => {
                write!(f, "TrainData::Shapes {{ seed: {seed}, next: {next} }}")
            }
            TrainData::Files(l) => write!(f, "TrainData::Files {{ cursor: {:?} }}", l.cursor()),
        }
    }
}

impl TrainData {
    /// Opens the source for batches of `batch_size` with loader seed `seed`.
    pub fn open(config: &DataConfig, batch_size: usize, seed: u64) -> Result<Self> {
        match config {
            DataConfig::Shapes {
                shapes,
                seed: data_seed,
            } => {
                shapes.validate()?;
                Ok(TrainData::Shapes {
                    config: shapes.clone(),
                    seed: *data_seed,
                    next: 0,
                })
            }
            DataConfig::Files {
                path,
                clip,
                workers,
                on_bad_sample,
            } => {
                let set = Dataset::open(path, *on_bad_sample)?;
                if set.is_empty() {
                    return Err(config_error("data.path", "holds no usable items"));
                }
                let cfg = LoaderConfig {
                    on_bad_sample: *on_bad_sample,
                    ..LoaderConfig::new(batch_size, *workers, seed, *clip)
                };
                Ok(TrainData::Files(Box::new(Loader::new(set, cfg)?)))
            }
        }
    }

    /// The clip shape `[C, T, H, W]` this source yields.
    pub fn clip_shape(config: &DataConfig) -> [i64; 4] {
        match config {
            DataConfig::Shapes { shapes, .. } => [
                3,
                shapes.frames as i64,
                shapes.height as i64,
                shapes.width as i64,
            ],
            DataConfig::Files { clip, .. } => [
                3,
                clip.num_frames as i64,
                clip.height as i64,
                clip.width as i64,
            ],
        }
    }

    /// The next `batch_size` clips and captions.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<(Tensor, Vec<String>)> {
        match self {
            TrainData::Shapes { config, seed, next } => {
                let mut videos = Vec::with_capacity(batch_size);
                let mut captions = Vec::with_capacity(batch_size);
                for _ in 0..batch_size {
                    let s = config.sample(*seed, *next, Split::Train)?;
                    *next += 1;
                    videos.push(s.video);
                    captions.push(s.caption);
                }
                Ok((Tensor::stack(&videos, 0), captions))
            }
            TrainData::Files(loader) => {
                let b = loader.next_batch()?;
                Ok((b.video, b.captions))
            }
        }
    }

    /// Where the stream is.
    pub fn cursor(&self) -> Cursor {
        match self {
            TrainData::Shapes { next, .. } => Cursor {
                epoch: 0,
                position: *next as usize,
            },
            TrainData::Files(loader) => loader.cursor(),
        }
    }

    /// Continues from `cursor`.
    pub fn restore(self, cursor: Cursor) -> Result<Self> {
        Ok(match self {
            TrainData::Shapes { config, seed, .. } => TrainData::Shapes {
                config,
                seed,
                next: cursor.position as u64,
            },
            TrainData::Files(loader) => TrainData::Files(Box::new(loader.with_cursor(cursor)?)),
        })
    }
}
