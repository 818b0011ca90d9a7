//! Clip sampling: which frames, at what size, as a `[3, T, H, W]` tensor in [-1, 1].

use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::decode::{decode_frames, decode_frames_until};
use crate::error::{DataError, Result};
use crate::frames::{FrameSize, SeekIndex, VideoInfo};
use crate::seek::{decode_window, verified_index};

/// How consecutive clip frames are spaced in the source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameStep {
    /// Every `n`-th source frame.
    Stride(usize),
    /// Resample to this many frames per second (nearest source frame).
    Fps(f64),
}

/// Where the clip starts in time, and where the crop sits in space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Uniformly random (training).
    Random,
    /// Centred (evaluation).
    Center,
}

/// What clip to cut from a video.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSpec {
    /// Frames per clip (1 for images).
    pub num_frames: usize,
    /// Spacing of the frames.
    pub step: FrameStep,
    /// Output height.
    pub height: u32,
    /// Output width.
    pub width: u32,
    /// Temporal offset: random (train) or centred (eval).
    pub offset: Placement,
    /// Crop after resizing the shorter side: random (train) or centred (eval).
    pub crop: Placement,
}

impl ClipSpec {
    /// A centred evaluation clip of `num_frames` consecutive frames at `height × width`.
    pub fn eval(num_frames: usize, height: u32, width: u32) -> Self {
        Self {
            num_frames,
            step: FrameStep::Stride(1),
            height,
            width,
            offset: Placement::Center,
            crop: Placement::Center,
        }
    }

    /// The same clip with random offset and crop (training).
    pub fn random(mut self) -> Self {
        self.offset = Placement::Random;
        self.crop = Placement::Random;
        self
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.num_frames == 0 {
            return Err(DataError::Option {
                key: "num_frames",
                reason: "must be at least 1".into(),
            });
        }
        if self.height == 0 || self.width == 0 {
            return Err(DataError::Option {
                key: "height/width",
                reason: "must be at least 1".into(),
            });
        }
        match self.step {
            FrameStep::Stride(0) => Err(DataError::Option {
                key: "stride",
                reason: "must be at least 1".into(),
            }),
            FrameStep::Fps(f) if !(f.is_finite() && f > 0.0) => Err(DataError::Option {
                key: "fps",
                reason: format!("must be a positive number, got {f}"),
            }),
            _ => Ok(()),
        }
    }

    /// Source frame indices for a video of `total` frames at `fps`, or `None` when it is too
    /// short. `rng` is used only for a random offset.
    pub fn frame_indices(&self, total: usize, fps: f64, rng: &mut impl Rng) -> Option<Vec<usize>> {
        let step = match self.step {
            FrameStep::Stride(s) => s as f64,
            FrameStep::Fps(target) => fps / target,
        };
        let span = step * (self.num_frames - 1) as f64;
        let last_start = total as f64 - 1.0 - span;
        if total == 0 || last_start < -1e-9 {
            return None;
        }
        let last_start = last_start.max(0.0).floor() as usize;
        let start = match self.offset {
            Placement::Center => last_start / 2,
            Placement::Random => rng.gen_range(0..=last_start),
        };
        Some(
            (0..self.num_frames)
                .map(|i| ((start as f64 + i as f64 * step).round() as usize).min(total - 1))
                .collect(),
        )
    }
}

/// A sampled clip.
#[derive(Debug)]
pub struct Clip {
    /// `[3, T, H, W]` float32 RGB in [-1, 1].
    pub video: Tensor,
    /// Source frame index of each clip frame.
    pub indices: Vec<usize>,
    /// What the file holds.
    pub source: VideoInfo,
    /// The file's seek index, when this load decoded it from start to end and it has one.
    pub seek_index: Option<SeekIndex>,
}

/// `frames` RGB24 `[T, h, w, 3]` bytes → `[3, T, H, W]` in [-1, 1], cropping `H × W` at
/// `(top, left)`.
pub fn frames_to_tensor(
    bytes: &[u8],
    t: usize,
    h: u32,
    w: u32,
    crop: (u32, u32, u32, u32),
) -> Tensor {
    let (top, left, ch, cw) = crop;
    Tensor::from_slice(bytes)
        .view([t as i64, h as i64, w as i64, 3])
        .narrow(1, top as i64, ch as i64)
        .narrow(2, left as i64, cw as i64)
        .permute([3, 0, 1, 2])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0
}

/// Decodes `path` and cuts the clip `spec` describes. `known_frames` (the decoded frame count,
/// when a previous pass established it) lets the decoder keep only the needed frames.
pub fn load_clip(
    path: &Path,
    spec: &ClipSpec,
    rng: &mut impl Rng,
    known_frames: Option<(usize, f64)>,
) -> Result<Clip> {
    load_clip_seeking(path, spec, rng, known_frames, None)
}

/// [`load_clip`] of a file whose frame count, rate and [`SeekIndex`] are known: the decoder
/// seeks to the key frame before the clip and stops after it (falling back to decoding from the
/// start, stopping after the clip, whenever seeking cannot give exactly those frames).
pub fn load_clip_seeking(
    path: &Path,
    spec: &ClipSpec,
    rng: &mut impl Rng,
    known_frames: Option<(usize, f64)>,
    seek: Option<&SeekIndex>,
) -> Result<Clip> {
    spec.validate()?;
    let size = FrameSize::Cover {
        width: spec.width,
        height: spec.height,
    };
    let too_short = |frames: usize| DataError::TooShort {
        path: path.to_path_buf(),
        frames,
        needed: spec.num_frames,
    };
    let (frames, indices) = match known_frames {
        Some((total, fps)) => {
            let indices = spec
                .frame_indices(total, fps, rng)
                .ok_or_else(|| too_short(total))?;
            let wanted = indices.clone();
            let (first, last) = (wanted[0], *wanted.last().expect("a clip has frames"));
            let keep = |i: usize| wanted.binary_search(&i).is_ok();
            let seeked = match seek.filter(|s| s.pts.len() == total) {
                Some(index) => decode_window(path, size, keep, (first, last), index)?,
                None => None,
            };
            let frames = match seeked {
                Some(frames) => frames,
                None => decode_frames_until(path, size, keep, last)?,
            };
            // Decoding stops after the last needed frame; a file that ends first changed.
            if frames.complete && frames.info.frames != total {
                return Err(DataError::Decode {
                    path: path.to_path_buf(),
                    reason: format!(
                        "decoded {} frames, the index says {total} (the file changed?)",
                        frames.info.frames
                    ),
                });
            }
            (frames, indices)
        }
        None => {
            let mut frames = decode_frames(path, size, |_| true)?;
            // Only key frames that really are entry points go into the index.
            frames.seek_index = verified_index(path, size, &frames)?;
            let indices = spec
                .frame_indices(frames.info.frames, frames.info.fps, rng)
                .ok_or_else(|| too_short(frames.info.frames))?;
            (frames, indices)
        }
    };
    // Gather the chosen frames (repeats allowed when resampling to a higher fps).
    let n = frames.width as usize * frames.height as usize * 3;
    let mut bytes = Vec::with_capacity(indices.len() * n);
    for &i in &indices {
        let slot = frames
            .indices
            .binary_search(&i)
            .expect("kept frames cover the indices");
        bytes.extend_from_slice(frames.frame(slot));
    }
    let (dh, dw) = (frames.height - spec.height, frames.width - spec.width);
    let (top, left) = match spec.crop {
        Placement::Center => (dh / 2, dw / 2),
        Placement::Random => (rng.gen_range(0..=dh), rng.gen_range(0..=dw)),
    };
    let video = frames_to_tensor(
        &bytes,
        indices.len(),
        frames.height,
        frames.width,
        (top, left, spec.height, spec.width),
    );
    Ok(Clip {
        video,
        indices,
        source: frames.info,
        seek_index: frames.seek_index,
    })
}
