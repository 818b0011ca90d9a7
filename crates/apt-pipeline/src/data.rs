//! Where training clips come from: the moving-shapes benchmark rendered on the fly (sample `i`
//! is a pure function of the seed and `i`, so the cursor is just a counter), or a folder /
//! manifest through `apt-data`'s loader (with its own cursor). Every file the loader skips is
//! reported once, with its reason.
//!
//! In a data-parallel run each rank loads only its rows of every global batch: shapes render
//! only the rank's samples, and the loader of a rank of N reads contiguous blocks of the shared
//! epoch order (`batch / N` per batch), which tile one process's batches in rank order. The
//! cursor is always the global one (the position one process would be at), so a checkpoint
//! resumes at any world size.

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
    /// The ranks the file loader is split over (it yields one rank's rows).
    loader_world: usize,
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
    /// Opens the source for global batches of `batch_size` with loader seed `seed`, for the
    /// rank `shard` (files and latents load only its rows; [`Shard::WHOLE`] for one process).
    /// Files listed but unusable (no caption, unreadable) are reported now.
    pub fn open(config: &DataConfig, batch_size: usize, seed: u64, shard: Shard) -> Result<Self> {
        let (rank, world) = (shard.rank, shard.world.max(1));
        let (start, local) = shard.range(batch_size, "batch_size")?;
        debug_assert_eq!(start, rank * local);
        let split = |cfg: LoaderConfig| LoaderConfig {
            rank,
            world_size: world,
            contiguous: true,
            batch_size: local,
            ..cfg
        };
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
                let cfg = split(LoaderConfig {
                    on_bad_sample: *on_bad_sample,
                    ..LoaderConfig::new(batch_size, *workers, seed, *clip)
                });
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
                let cfg = split(LoaderConfig {
                    on_bad_sample: *on_bad_sample,
                    ..LoaderConfig::new(batch_size, *workers, seed, clip)
                });
                Source::Files(Some(Box::new(Loader::new(set, cfg)?)))
            }
        };
        let mut data = Self {
            source,
            space: Space::Pixels,
            latent: config.is_latent(),
            shape: config.clip_shape(),
            reported: 0,
            loader_world: world,
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
        if self.loader_world > 1 && matches!(self.source, Source::Files(_)) {
            return Err(FlowError::Source(
                "this file source loads one rank's rows: draw with next_shard".into(),
            ));
        }
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
            if shard.world != self.loader_world {
                return Err(FlowError::Source(
                    format!(
                        "the file source was opened for {} ranks, the step runs on {}",
                        self.loader_world, shard.world
                    )
                    .into(),
                ));
            }
            // The loader yields this rank's rows of the global batch.
            let result = self.batch(batch / shard.world);
            self.report_skipped();
            return self.to_space(result.map_err(|e| FlowError::Source(Box::new(e)))?);
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
            // The global position: this rank's times the ranks.
            Source::Files(loader) => {
                let c = loader.as_ref().expect("loader").cursor();
                Cursor {
                    epoch: c.epoch,
                    position: c.position * self.loader_world,
                }
            }
        }
    }

    fn restore(&mut self, cursor: Cursor) -> apt_flow::Result<()> {
        match &mut self.source {
            Source::Shapes { next, .. } => *next = cursor.position as u64,
            Source::Files(loader) => {
                if !cursor.position.is_multiple_of(self.loader_world) {
                    return Err(FlowError::Source(
                        format!(
                            "the saved data position {} does not split over {} ranks",
                            cursor.position, self.loader_world
                        )
                        .into(),
                    ));
                }
                let l = loader.take().expect("loader");
                let c = apt_data::Cursor {
                    epoch: cursor.epoch,
                    position: cursor.position / self.loader_world,
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

#[cfg(test)]
mod tests {
    use apt_data::shapes::{write_folder, ShapesConfig, Split};
    use apt_data::OnBadSample;

    use super::*;

    /// Each of 2 ranks decodes only its half of every global batch, and the halves are the
    /// rows of one process's batches; the cursor is the global one, and a rank resumes from
    /// one process's.
    #[test]
    fn each_rank_loads_only_its_rows_of_the_global_batch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ShapesConfig::new(4, 16, 16);
        write_folder(&cfg, 3, Split::All, 9, 8.0, dir.path(), |_| {}).unwrap();
        let config = DataConfig::Files {
            path: dir.path().to_path_buf(),
            clip: ClipSpec::eval(4, 16, 16).random(),
            workers: 1,
            on_bad_sample: OnBadSample::Fail,
        };
        let mut one = TrainData::open(&config, 4, 7, Shard::WHOLE).unwrap();
        let shards = [Shard { rank: 0, world: 2 }, Shard { rank: 1, world: 2 }];
        let mut ranks: Vec<TrainData> = shards
            .iter()
            .map(|&s| TrainData::open(&config, 4, 7, s).unwrap())
            .collect();
        for _ in 0..3 {
            let (whole, captions) = one.next_shard(4, Shard::WHOLE).unwrap();
            for (data, shard) in ranks.iter_mut().zip(shards) {
                let (rows, mine) = data.next_shard(4, shard).unwrap();
                assert!(rows.equal(&shard.rows(&whole, "b").unwrap()));
                assert_eq!(mine, shard.items(&captions, "b").unwrap());
                assert_eq!(data.cursor(), one.cursor());
            }
        }
        let loaded = |d: &TrainData| match &d.source {
            Source::Files(Some(l)) => l.stats().loaded,
            _ => 0,
        };
        assert_eq!((loaded(&one), loaded(&ranks[0])), (12, 6));
        // A rank resumes from a one-process cursor; a rank's source refuses global batches.
        let mut resumed = TrainData::open(&config, 4, 7, shards[1]).unwrap();
        resumed.restore(one.cursor()).unwrap();
        let (whole, _) = one.next_shard(4, Shard::WHOLE).unwrap();
        let (rows, _) = resumed.next_shard(4, shards[1]).unwrap();
        assert!(rows.equal(&shards[1].rows(&whole, "b").unwrap()));
        assert!(resumed.next_clips(4).is_err());
    }
}
