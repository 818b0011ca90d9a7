//! Where training clips come from: the moving-shapes benchmark rendered on the fly (sample `i`
//! is a pure function of the seed and `i`, so the cursor is just a counter), or a folder /
//! manifest through `apt-data`'s loader (with its own cursor). Every file the loader skips is
//! reported once, with its reason.

use apt_data::shapes::ShapesConfig;
use apt_data::{ClipSpec, Dataset, Loader, LoaderConfig, Skipped};
use apt_flow::data::{ClipSource, Cursor};
use apt_flow::train::Shard;
use apt_flow::FlowError;
use tch::{Device, Tensor};

pub use crate::config::DataConfig;
use crate::error::Result;
use crate::latent::Space;
use crate::prefetch::{render_range, ShapesPrefetch};

/// A stream of `(clips [B, C, T, H, W], captions)` with a resumable cursor.
pub struct TrainData {
    source: Source,
    /// What the batches are turned into (latents under a VAE).
    space: Space,
    /// The source yields stored latents.
    latent: bool,
    shape: [i64; 4],
    /// Skipped files already reported.
    reported: usize,
}

enum Source {
    /// Rendered shapes; the cursor's `position` counts samples drawn.
    Shapes {
        config: ShapesConfig,
        seed: u64,
        next: u64,
        /// Batches rendered ahead on a thread (see [`TrainData::prefetching`]).
        prefetch: Option<ShapesPrefetch>,
    },
    /// Files through the loader (`None` only while the cursor is being restored).
    Files(Option<Box<Loader>>),
}

impl std::fmt::Debug for TrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainData {{ cursor: {:?} }}", self.cursor())
    }
}

impl TrainData {
    /// Opens the source for batches of `batch_size` with loader seed `seed`. Files listed but
    /// unusable (no caption, unreadable) are reported now.
    pub fn open(config: &DataConfig, batch_size: usize, seed: u64) -> Result<Self> {
        let source = match config {
            DataConfig::Shapes {
                shapes,
                seed: data_seed,
            } => {
                shapes.validate()?;
                Source::Shapes {
                    config: shapes.clone(),
                    seed: *data_seed,
                    next: 0,
                    prefetch: None,
                }
            }
            DataConfig::Files {
                path,
                clip,
                workers,
                on_bad_sample,
            } => {
                let set = Dataset::open(path, *on_bad_sample)?;
                let cfg = LoaderConfig {
                    on_bad_sample: *on_bad_sample,
                    ..LoaderConfig::new(batch_size, *workers, seed, *clip)
                };
                Source::Files(Some(Box::new(Loader::new(set, cfg)?)))
            }
            DataConfig::Latents {
                path,
                shape,
                workers,
                on_bad_sample,
            } => {
                let set = Dataset::open(path, *on_bad_sample)?;
                let clip = ClipSpec::eval(shape[1], shape[2] as u32, shape[3] as u32).random();
                let cfg = LoaderConfig {
                    on_bad_sample: *on_bad_sample,
                    ..LoaderConfig::new(batch_size, *workers, seed, clip)
                };
                Source::Files(Some(Box::new(Loader::new(set, cfg)?)))
            }
        };
        let mut data = Self {
            source,
            space: Space::Pixels,
            latent: config.is_latent(),
            shape: config.clip_shape(),
            reported: 0,
        };
        data.report_skipped();
        Ok(data)
    }

    /// Training on a CUDA `device`: renders moving-shapes batches ahead on a thread of their
    /// own, pinned ([`ShapesPrefetch`]); the same batches as without. On the CPU the thread
    /// would compete with libtorch's for the cores (a demo pre-training update: 0.60 s against
    /// 0.53 s on 2 cores), so nothing changes there. Files already come through the loader's
    /// worker threads.
    pub fn prefetching(self, device: Device) -> Self {
        if device.is_cuda() {
            self.prefetching_always(device)
        } else {
            self
        }
    }

    /// [`Self::prefetching`] on any device (tests; machines with cores to spare).
    pub fn prefetching_always(mut self, device: Device) -> Self {
        if let Source::Shapes {
            config,
            seed,
            prefetch,
            ..
        } = &mut self.source
        {
            *prefetch = Some(ShapesPrefetch::start(config.clone(), *seed, device));
        }
        self
    }

    /// Batches in `space`: under a VAE, every batch of pixel clips is encoded into normalised
    /// latents (on the VAE's device) and [`ClipSource::clip_shape`] is the latent shape.
    /// Stored latents (`kind = "latents"`) are only normalised.
    pub fn in_space(mut self, space: &Space) -> Self {
        if !self.latent {
            self.shape = space.model_shape(self.shape);
        }
        self.space = space.clone();
        self
    }

    fn to_space(
        &self,
        (video, captions): (Tensor, Vec<String>),
    ) -> apt_flow::Result<(Tensor, Vec<String>)> {
        let video = match self.latent {
            true => self.space.normalize(&video),
            false => self.space.from_pixels(&video),
        }
        .map_err(|e| FlowError::Source(Box::new(e)))?;
        Ok((video, captions))
    }

    /// Every file or manifest line skipped so far, with its reason.
    pub fn skipped(&self) -> Vec<Skipped> {
        match &self.source {
            Source::Files(Some(loader)) => loader.stats().skipped.clone(),
            _ => Vec::new(),
        }
    }

    /// Warns once for every skipped file not reported yet.
    fn report_skipped(&mut self) {
        let skipped = self.skipped();
        for s in &skipped[self.reported.min(skipped.len())..] {
            tracing::warn!(file = %s.what, reason = %s.reason, "skipping a bad sample");
        }
        self.reported = skipped.len();
    }

    fn batch(&mut self, batch_size: usize) -> apt_data::Result<(Tensor, Vec<String>)> {
        match &mut self.source {
            Source::Shapes {
                config,
                seed,
                next,
                prefetch,
            } => {
                let first = *next;
                *next += batch_size as u64;
                shapes_batch(config, *seed, prefetch, (first, batch_size), batch_size)
            }
            Source::Files(loader) => {
                let b = loader.as_mut().expect("loader").next_batch()?;
                Ok((b.video, b.captions))
            }
        }
    }
}

/// Samples `[first, first + len)` of the shapes stream, from the prefetching thread when there
/// is one (which then renders the range `stride` samples on).
fn shapes_batch(
    config: &ShapesConfig,
    seed: u64,
    prefetch: &mut Option<ShapesPrefetch>,
    (first, len): (u64, usize),
    stride: usize,
) -> apt_data::Result<(Tensor, Vec<String>)> {
    match prefetch {
        Some(p) => p.take(first, len, stride as u64),
        None => render_range(config, seed, (first, len)),
    }
}

impl ClipSource for TrainData {
    fn next_clips(&mut self, batch: usize) -> apt_flow::Result<(Tensor, Vec<String>)> {
        let result = self.batch(batch);
        self.report_skipped();
        self.to_space(result.map_err(|e| FlowError::Source(Box::new(e)))?)
    }

    /// Moving shapes render only this rank's clips (sample `i` of the stream is the same clip on
    /// every rank); files load the global batch and keep the shard's rows.
    fn next_shard(
        &mut self,
        batch: usize,
        shard: Shard,
    ) -> apt_flow::Result<(Tensor, Vec<String>)> {
        let Source::Shapes {
            config,
            seed,
            next,
            prefetch,
        } = &mut self.source
        else {
            let (video, captions) = self.next_clips(batch)?;
            if shard.world == 1 {
                return Ok((video, captions));
            }
            return Ok((
                shard.rows(&video, "batch_size")?,
                shard.items(&captions, "batch_size")?,
            ));
        };
        let (start, len) = shard.range(batch, "batch_size")?;
        let first = *next + start as u64;
        *next += batch as u64;
        let rows = shapes_batch(config, *seed, prefetch, (first, len), batch)
            .map_err(|e| FlowError::Source(Box::new(e)))?;
        self.to_space(rows)
    }

    fn cursor(&self) -> Cursor {
        match &self.source {
            Source::Shapes { next, .. } => Cursor {
                epoch: 0,
                position: *next as usize,
            },
            Source::Files(loader) => {
                let c = loader.as_ref().expect("loader").cursor();
                Cursor {
                    epoch: c.epoch,
                    position: c.position,
                }
            }
        }
    }

    fn restore(&mut self, cursor: Cursor) -> apt_flow::Result<()> {
        match &mut self.source {
            Source::Shapes { next, .. } => *next = cursor.position as u64,
            Source::Files(loader) => {
                let l = loader.take().expect("loader");
                let c = apt_data::Cursor {
                    epoch: cursor.epoch,
                    position: cursor.position,
                };
                *loader = Some(Box::new(
                    l.with_cursor(c)
                        .map_err(|e| FlowError::Source(Box::new(e)))?,
                ));
            }
        }
        Ok(())
    }

    fn clip_shape(&self) -> [i64; 4] {
        self.shape
    }
}
