//! Decoded FFmpeg frames to RGB24 bytes, collected into [`Frames`]: one scaler per pixel
//! format and size seen, at the output size the first frame fixes. Used by both decoders
//! ([`crate::decode`](mod@crate::decode), [`crate::seek`]).

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{context::Context as Scaler, flag::Flags};
use ffmpeg_next as ffmpeg;

use crate::error::{decode_error, Result};
use crate::frames::{FrameSize, Frames, SeekIndex, VideoInfo};

/// Converts decoded frames to RGB24 at one output size (fixed by the first frame seen) and
/// collects the kept ones.
pub(crate) struct Converter {
    size: FrameSize,
    out_size: Option<(u32, u32)>,
    // One scaler per (format, size) seen; streams rarely have more than one.
    scalers: Vec<((Pixel, u32, u32), Scaler)>,
    rgb: ffmpeg::frame::Video,
    data: Vec<u8>,
    indices: Vec<usize>,
}

impl Converter {
    pub fn new(size: FrameSize) -> Self {
        Self {
            size,
            out_size: None,
            scalers: Vec::new(),
            rgb: ffmpeg::frame::Video::empty(),
            data: Vec::new(),
            indices: Vec::new(),
        }
    }

    /// Fixes the output size from `frame` (the first one seen); with `reserve_frames`, one
    /// allocation for that many frames (growing a large buffer by doubling copies it again
    /// and again).
    pub fn see(&mut self, frame: &ffmpeg::frame::Video, reserve_frames: Option<u64>) {
        if self.out_size.is_none() {
            let (ow, oh) = self.size.output_for(frame.width(), frame.height());
            self.out_size = Some((ow, oh));
            if let Some(n) = reserve_frames.filter(|&n| n <= 100_000) {
                self.data
                    .reserve(n as usize * ow as usize * oh as usize * 3);
            }
        }
    }

    /// Converts and keeps `frame` as source frame `index`.
    pub fn keep(&mut self, path: &Path, index: usize, frame: &ffmpeg::frame::Video) -> Result<()> {
        self.see(frame, None);
        let (ow, oh) = self.out_size.expect("set by see");
        let key = (frame.format(), frame.width(), frame.height());
        let slot = match self.scalers.iter().position(|(k, _)| *k == key) {
            Some(slot) => slot,
            None => {
                let scaler =
                    Scaler::get(key.0, key.1, key.2, Pixel::RGB24, ow, oh, Flags::BILINEAR)
                        .map_err(|e| {
                            decode_error(
                                path,
                                format!(
                                    "cannot convert {:?} {}x{} frames to RGB ({e})",
                                    key.0, key.1, key.2
                                ),
                            )
                        })?;
                self.scalers.push((key, scaler));
                self.scalers.len() - 1
            }
        };
        self.scalers[slot]
            .1
            .run(frame, &mut self.rgb)
            .map_err(|e| decode_error(path, format!("frame {index}: conversion failed ({e})")))?;
        let stride = self.rgb.stride(0);
        let row = ow as usize * 3;
        let plane = self.rgb.data(0);
        for y in 0..oh as usize {
            self.data
                .extend_from_slice(&plane[y * stride..y * stride + row]);
        }
        self.indices.push(index);
        Ok(())
    }

    /// The kept frames (at least one frame must have been seen).
    pub fn finish(self, info: VideoInfo, complete: bool, seek_index: Option<SeekIndex>) -> Frames {
        let (width, height) = self.out_size.expect("at least one frame decoded");
        Frames {
            info,
            width,
            height,
            data: self.data,
            indices: self.indices,
            complete,
            seek_index,
        }
    }
}
