//! What the training steps draw their data from, as traits the caller implements: clips with
//! captions in a resumable order ([`ClipSource`]) and captions turned into model conditioning
//! ([`CaptionEncoder`]). Implement them over any clip store and text encoder; this crate
//! depends on none.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::error::Result;
use crate::flow::Conditioning;
use crate::train::Shard;

/// Where a data stream is: the epoch and the position in that epoch's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch number (from 0).
    pub epoch: u64,
    /// Samples (or batches' samples) consumed in this epoch.
    pub position: usize,
}

/// Moves a batch of clips to the training `device`; to a CUDA device without waiting (the copy
/// overlaps the step when the batch is in pinned memory, as prefetching sources leave it).
pub fn to_training_device(clips: &Tensor, device: Device) -> Tensor {
    clips.to_device_(device, clips.kind(), device.is_cuda(), false)
}

/// A stream of training clips with their captions that can be saved and resumed.
pub trait ClipSource {
    /// The next `batch` clips `[B, C, T, H, W]` (values in [-1, 1]) and their captions.
    fn next_clips(&mut self, batch: usize) -> Result<(Tensor, Vec<String>)>;
    /// `shard`'s rows of the next global batch of `batch` clips (`[batch / N, C, T, H, W]`);
    /// the stream advances by the whole global batch on every rank. By default it draws the
    /// global batch and keeps the shard; a source that can load only its rows should.
    fn next_shard(&mut self, batch: usize, shard: Shard) -> Result<(Tensor, Vec<String>)> {
        let (video, captions) = self.next_clips(batch)?;
        if shard.world == 1 {
            return Ok((video, captions));
        }
        Ok((
            shard.rows(&video, "batch_size")?,
            shard.items(&captions, "batch_size")?,
        ))
    }
    /// The position to save in a checkpoint.
    fn cursor(&self) -> Cursor;
    /// Continues the stream from a saved position.
    fn restore(&mut self, cursor: Cursor) -> Result<()>;
    /// The clip shape `[C, T, H, W]` this source yields.
    fn clip_shape(&self) -> [i64; 4];
}

/// Captions → conditioning `(context [B, L, D], pooled [B, D_pool])`, every caption padded or
/// truncated to the same token count.
pub trait CaptionEncoder {
    /// Conditioning for `captions`; where `drop[i]` is true caption `i` is replaced by the null
    /// (empty) caption, as classifier-free-guidance dropout does (`drop` may be shorter).
    fn encode(&self, captions: &[String], drop: &[bool]) -> Result<Conditioning>;

    /// The null condition for one sample (`[1, L, D]`, `[1, D_pool]`).
    fn null(&self) -> Result<Conditioning> {
        self.encode(&[String::new()], &[])
    }
}
