//! The data a decode produces and describes, with no FFmpeg in it: the output [`FrameSize`],
//! what a file holds ([`VideoInfo`]), the decoded RGB [`Frames`], and where a file's frames
//! are for seeking ([`SeekIndex`]). Decoding itself is in
//! [`crate::decode`](mod@crate::decode) and [`crate::seek`].

use serde::{Deserialize, Serialize};

/// The size decoded frames are converted to (RGB24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// The first frame's own size (later frames are scaled to it if the stream changes size).
    Native,
    /// Exactly `width × height` (aspect ratio not kept).
    Exact {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
    /// The smallest size with the frame's aspect ratio that covers `width × height` (the
    /// shorter side is resized; a centre or random crop then gives `width × height`).
    Cover {
        /// Width to cover.
        width: u32,
        /// Height to cover.
        height: u32,
    },
}

impl FrameSize {
    /// Output size for a `w × h` source frame.
    pub fn output_for(self, w: u32, h: u32) -> (u32, u32) {
        match self {
            FrameSize::Native => (w, h),
            FrameSize::Exact { width, height } => (width, height),
            FrameSize::Cover { width, height } => {
                let scale = (width as f64 / w as f64).max(height as f64 / h as f64);
                let ow = ((w as f64 * scale).round() as u32).max(width);
                let oh = ((h as f64 * scale).round() as u32).max(height);
                (ow, oh)
            }
        }
    }
}

/// What a file holds, with the frame count established by decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Container (demuxer) name, e.g. `mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`, `gif`.
    pub container: String,
    /// Video codec name, e.g. `h264`, `vp9`, `theora`, `png`.
    pub codec: String,
    /// Width of the decoded frames (the first frame's).
    pub width: u32,
    /// Height of the decoded frames (the first frame's).
    pub height: u32,
    /// Frames per second (the stream's average rate, else its base rate, else 25).
    pub fps: f64,
    /// Frames decoded.
    pub frames: usize,
    /// What the container header claims, when it says anything.
    pub header_frames: Option<u64>,
    /// Packets the decoder rejected (skipped).
    pub corrupt_packets: usize,
}

/// Decoded RGB frames, `frames × height × width × 3` bytes, row-major.
#[derive(Debug, Clone)]
pub struct Frames {
    /// What the file holds.
    pub info: VideoInfo,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// RGB24 pixels of the kept frames, one after another.
    pub data: Vec<u8>,
    /// Source index of each kept frame.
    pub indices: Vec<usize>,
    /// Whether the whole file was decoded (`info.frames` is then its frame count); false when
    /// decoding stopped after the last frame asked for ([`crate::decode_frames_until`]).
    pub complete: bool,
    /// Where the file's frames are, for later seeking: set by a decode to the end when every
    /// frame has a distinct, increasing timestamp.
    pub seek_index: Option<SeekIndex>,
}

impl Frames {
    /// Number of kept frames.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when no frame was kept.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The RGB bytes of kept frame `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.width as usize * self.height as usize * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// Where a file's frames are, for seeking: every frame's timestamp in display order and the
/// frames decoding can start from (key frames), as one decode from the start saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekIndex {
    /// The video stream's time base `[numerator, denominator]` (seconds per timestamp unit).
    pub time_base: [i32; 2],
    /// Timestamp of frame `i` (its best-effort presentation time), strictly increasing.
    pub pts: Vec<i64>,
    /// Indices of the key frames, ascending.
    pub key_frames: Vec<usize>,
}

impl SeekIndex {
    /// The index of a decode that saw timestamps `pts` and key frames `key_frames`; `None`
    /// when a timestamp is missing or they do not increase (seeking could not find frames).
    pub fn new(time_base: [i32; 2], pts: &[Option<i64>], key_frames: Vec<usize>) -> Option<Self> {
        let pts: Vec<i64> = pts.iter().copied().collect::<Option<_>>()?;
        let increasing = pts.windows(2).all(|w| w[0] < w[1]);
        (increasing && time_base[0] > 0 && time_base[1] > 0 && !key_frames.is_empty()).then_some(
            Self {
                time_base,
                pts,
                key_frames,
            },
        )
    }

    /// The frame with timestamp `pts`.
    pub fn frame_at(&self, pts: i64) -> Option<usize> {
        self.pts.binary_search(&pts).ok()
    }

    /// The last key frame at or before frame `index`.
    pub fn key_frame_before(&self, index: usize) -> Option<usize> {
        let n = self.key_frames.partition_point(|&k| k <= index);
        n.checked_sub(1).map(|i| self.key_frames[i])
    }

    /// Frame `index`'s timestamp in microseconds (FFmpeg's `AV_TIME_BASE`, what a seek takes).
    pub fn micros(&self, index: usize) -> i64 {
        let [num, den] = self.time_base;
        (self.pts[index] as i128 * num as i128 * 1_000_000 / den as i128) as i64
    }
}
