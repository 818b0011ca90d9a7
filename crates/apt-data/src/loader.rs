//! The batch loader: a seeded shuffle per epoch, sharding by `(rank, world_size)`, decoding
//! on worker threads with a bounded prefetch window, and a resumable cursor.
//!
//! Batches do not depend on the number of workers: sample `i` of epoch `e` draws its clip
//! offset and crop from its own random stream `(seed, e, i)`, and results are reassembled in
//! sequence order. A cursor `(epoch, position)` names the next sample of this rank's sequence;
//! restoring it reproduces the batches an uninterrupted run would have produced. A batch never
//! spans two epochs (the remainder of an epoch is dropped).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::clip::ClipSpec;
use crate::dataset::{Dataset, OnBadSample, Sample, Skipped};
use crate::decode_pool::{load, Job, Pool};
use crate::error::{DataError, Result};
use crate::text::TextEmbedding;

/// How batches are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Decoding threads; 0 decodes on the calling thread.
    pub workers: usize,
    /// Batches decoded ahead of the consumer (bounds memory).
    pub prefetch_batches: usize,
    /// Seed of the shuffles and of every sample's clip placement.
    pub seed: u64,
    /// Shuffle every epoch (else dataset order).
    pub shuffle: bool,
    /// What to do with unreadable samples.
    pub on_bad_sample: OnBadSample,
    /// This process's shard.
    pub rank: usize,
    /// Number of shards.
    pub world_size: usize,
    /// How the shards split an epoch's order: every `world_size`-th sample (false), or in
    /// contiguous blocks (true) — rank `r`'s batch `j` is positions
    /// `[j·B + r·b, j·B + (r + 1)·b)` of the shared order (`b = batch_size`,
    /// `B = world_size · b`), so the ranks' batches tile, in rank order, the batches one
    /// process of batch `B` would load: what data-parallel training that equals one process
    /// needs.
    #[serde(default)]
    pub contiguous: bool,
    /// Which clip to cut from each item.
    pub clip: ClipSpec,
}

impl LoaderConfig {
    /// One process, shuffled, two prefetched batches, skipping bad samples.
    pub fn new(batch_size: usize, workers: usize, seed: u64, clip: ClipSpec) -> Self {
        Self {
            batch_size,
            workers,
            prefetch_batches: 2,
            seed,
            shuffle: true,
            on_bad_sample: OnBadSample::Skip,
            rank: 0,
            world_size: 1,
            contiguous: false,
            clip,
        }
    }
}

/// Where the loader is: the next sample of this rank's sequence for `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch number (from 0).
    pub epoch: u64,
    /// Position in this rank's sequence for the epoch.
    pub position: usize,
}

/// A collated batch.
#[derive(Debug)]
pub struct Batch {
    /// `[B, C, T, H, W]`.
    pub video: Tensor,
    /// Captions, in batch order.
    pub captions: Vec<String>,
    /// Precomputed text embeddings, where items have them.
    pub embeddings: Vec<Option<TextEmbedding>>,
    /// Data-set index of every sample.
    pub items: Vec<usize>,
    /// The epoch the batch belongs to.
    pub epoch: u64,
}

/// What the loader has done.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoaderStats {
    /// Samples delivered in batches.
    pub loaded: usize,
    /// Skip events (a bad file counts once per epoch it is met).
    pub skip_events: usize,
    /// Every distinct skipped file or manifest line with its reason.
    pub skipped: Vec<Skipped>,
}

/// Batches from a [`Dataset`].
pub struct Loader {
    dataset: Arc<Dataset>,
    cfg: LoaderConfig,
    cursor: Cursor,
    order: Vec<usize>,
    dispatched: usize,
    done: BTreeMap<usize, Result<Sample>>,
    pool: Option<Pool>,
    stats: LoaderStats,
    skipped_seen: BTreeSet<String>,
}

impl Loader {
    /// A loader over `dataset`, starting at epoch 0.
    pub fn new(dataset: Dataset, cfg: LoaderConfig) -> Result<Self> {
        let opt = |key: &'static str, reason: &str| {
            Err(DataError::Option {
                key,
                reason: reason.into(),
            })
        };
        if cfg.batch_size == 0 {
            return opt("batch_size", "must be at least 1");
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return opt("rank", "needs 0 <= rank < world_size");
        }
        cfg.clip.validate()?;
        if dataset.len() / cfg.world_size < cfg.batch_size {
            return Err(DataError::Option {
                key: "batch_size",
                reason: format!(
                    "{} items over {} shards cannot fill one batch of {}",
                    dataset.len(),
                    cfg.world_size,
                    cfg.batch_size
                ),
            });
        }
        let dataset = Arc::new(dataset);
        let pool = (cfg.workers > 0)
            .then(|| Pool::new(cfg.workers, Arc::clone(&dataset), cfg.clip, cfg.seed));
        let stats = LoaderStats {
            skipped: dataset.skipped.clone(),
            ..Default::default()
        };
        let skipped_seen = dataset.skipped.iter().map(|s| s.what.clone()).collect();
        let mut loader = Self {
            dataset,
            cfg,
            cursor: Cursor::default(),
            order: vec![],
            dispatched: 0,
            done: BTreeMap::new(),
            pool,
            stats,
            skipped_seen,
        };
        loader.start_epoch(Cursor::default());
        Ok(loader)
    }

    /// Continues from a saved cursor.
    pub fn with_cursor(mut self, cursor: Cursor) -> Result<Self> {
        self.start_epoch(Cursor {
            epoch: cursor.epoch,
            position: 0,
        });
        if cursor.position > self.order.len() {
            return Err(DataError::Option {
                key: "cursor",
                reason: format!(
                    "position {} is past this epoch's {} samples",
                    cursor.position,
                    self.order.len()
                ),
            });
        }
        self.cursor = cursor;
        self.dispatched = cursor.position;
        Ok(self)
    }

    /// The cursor to save: the next batch starts here.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// What the loader has delivered and skipped so far.
    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// This rank's sample sequence for `epoch` (data-set indices).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let n = self.dataset.len();
        let mut all: Vec<usize> = (0..n).collect();
        if self.cfg.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ 0x5eed_5eed);
            rng.set_stream(epoch);
            all.shuffle(&mut rng);
        }
        if self.cfg.contiguous {
            let (b, w, r) = (self.cfg.batch_size, self.cfg.world_size, self.cfg.rank);
            let global = b * w;
            return (0..n / global.max(1))
                .flat_map(|j| all[j * global + r * b..j * global + (r + 1) * b].to_vec())
                .collect();
        }
        let per_rank = n / self.cfg.world_size;
        all.into_iter()
            .skip(self.cfg.rank)
            .step_by(self.cfg.world_size)
            .take(per_rank)
            .collect()
    }

    fn start_epoch(&mut self, cursor: Cursor) {
        self.order = self.epoch_order(cursor.epoch);
        self.cursor = cursor;
        self.dispatched = cursor.position;
        self.done.clear();
    }

    /// Keeps the prefetch window full.
    fn dispatch(&mut self) {
        let Some(pool) = &self.pool else { return };
        let window = self.cfg.batch_size * self.cfg.prefetch_batches.max(1);
        while self.dispatched < self.order.len() && self.dispatched < self.cursor.position + window
        {
            let job = Job {
                epoch: self.cursor.epoch,
                position: self.dispatched,
                index: self.order[self.dispatched],
            };
            if let Some(jobs) = &pool.jobs {
                let _ = jobs.send(job);
            }
            self.dispatched += 1;
        }
    }

    /// The sample at the cursor (waiting for a worker when needed).
    fn take(&mut self) -> Result<Sample> {
        let position = self.cursor.position;
        let Some(pool) = &self.pool else {
            let job = Job {
                epoch: self.cursor.epoch,
                position,
                index: self.order[position],
            };
            return load(&self.dataset, &self.cfg.clip, self.cfg.seed, &job);
        };
        loop {
            if let Some(result) = self.done.remove(&position) {
                return result;
            }
            let (epoch, at, result) = pool.results.recv().map_err(|_| DataError::Option {
                key: "workers",
                reason: "the decoding threads stopped".into(),
            })?;
            if epoch == self.cursor.epoch {
                self.done.insert(at, result);
            }
        }
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let mut samples: Vec<(usize, Sample)> = Vec::with_capacity(self.cfg.batch_size);
        let mut rollovers = 0;
        while samples.len() < self.cfg.batch_size {
            if self.order.len() - self.cursor.position < self.cfg.batch_size - samples.len() {
                // Not enough left in this epoch: drop the partial batch, start the next epoch.
                // Two rollovers in one call mean a whole epoch could not fill one batch.
                rollovers += 1;
                if rollovers > 1 {
                    return Err(self.no_full_batch());
                }
                samples.clear();
                self.start_epoch(Cursor {
                    epoch: self.cursor.epoch + 1,
                    position: 0,
                });
                continue;
            }
            self.dispatch();
            let index = self.order[self.cursor.position];
            let result = self.take();
            self.cursor.position += 1;
            match result {
                Ok(sample) => samples.push((index, sample)),
                Err(e) if self.cfg.on_bad_sample == OnBadSample::Skip => {
                    self.stats.skip_events += 1;
                    let what = self.dataset.items[index].path().display().to_string();
                    if self.skipped_seen.insert(what.clone()) {
                        self.stats.skipped.push(Skipped {
                            what,
                            reason: e.to_string(),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.dispatch();
        self.collate(samples)
    }

    /// Why a whole epoch could not fill one batch: how many items this loader draws from,
    /// how many of them turned out unreadable (the first with its reason), and the batch size.
    fn no_full_batch(&self) -> DataError {
        let total = self.order.len();
        let unreadable: Vec<String> = self
            .order
            .iter()
            .map(|&i| self.dataset.items[i].path().display().to_string())
            .filter(|what| self.skipped_seen.contains(what))
            .collect();
        let bad = unreadable.len();
        let first = self
            .stats
            .skipped
            .iter()
            .find(|s| unreadable.contains(&s.what))
            .map(|s| format!(" (first: {}: {})", s.what, s.reason))
            .unwrap_or_default();
        DataError::Option {
            key: "dataset",
            reason: format!(
                "an epoch cannot fill one batch of {}: {total} item(s), {bad} of them found \
                 unreadable and skipped{first}, so at most {} readable — fix or remove the \
                 unreadable files, add data, or lower the batch size",
                self.cfg.batch_size,
                total - bad
            ),
        }
    }

    fn collate(&mut self, samples: Vec<(usize, Sample)>) -> Result<Batch> {
        let shape = samples[0].1.video.size();
        if let Some((i, s)) = samples.iter().find(|(_, s)| s.video.size() != shape) {
            return Err(DataError::Dataset {
                path: self.dataset.items[*i].path().to_path_buf(),
                reason: format!(
                    "shape {:?} differs from the batch's {shape:?}",
                    s.video.size()
                ),
            });
        }
        self.stats.loaded += samples.len();
        let video = Tensor::stack(
            &samples
                .iter()
                .map(|(_, s)| s.video.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let items = samples.iter().map(|(i, _)| *i).collect();
        let (captions, embeddings) = samples
            .into_iter()
            .map(|(_, s)| (s.caption, s.embedding))
            .unzip();
        Ok(Batch {
            video,
            captions,
            embeddings,
            items,
            epoch: self.cursor.epoch,
        })
    }
}
