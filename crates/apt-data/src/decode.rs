//! Decoding videos and images in process with FFmpeg (`ffmpeg-next` on the system's
//! libavformat/libavcodec/libswscale).
//!
//! Lessons built in: the scaler is built from *each decoded frame's own* pixel format and size
//! (a Theora clip can decode at 214×160 inside a 224×160 container, and streams may change
//! size); frames are counted by decoding, never taken from the header (an AVI can claim 444
//! and decode 68); FFmpeg's own log is limited to errors. Packets the decoder rejects are
//! skipped and counted, as the `ffmpeg` tool does; a file with no decodable frame is an error.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use ffmpeg_next as ffmpeg;

use crate::convert::Converter;
use crate::error::{decode_error, DataError, Result};
pub use crate::seek::SeekIndex;

/// Stop reading after this many packets: a guard against pathological inputs that never end.
const MAX_PACKETS: usize = 5_000_000;

static INIT: Once = Once::new();

/// Threads per decoder (0 = FFmpeg's automatic choice, like the `ffmpeg` tool).
static DECODER_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the threads each decoder may use (0 = automatic, the default). Loaders that decode
/// on many worker threads may prefer 1.
pub fn set_decoder_threads(threads: usize) {
    DECODER_THREADS.store(threads, Ordering::Relaxed);
}

/// Initialises FFmpeg once per process and limits its log to errors.
pub fn init() {
    INIT.call_once(|| {
        let _ = ffmpeg::init();
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    });
}

/// Silences FFmpeg's log entirely (for tests and loaders that report errors themselves).
pub fn quiet_ffmpeg_log() {
    init();
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
}

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
    /// decoding stopped after the last frame asked for ([`decode_frames_until`]).
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

fn rate_of(stream: &ffmpeg::format::stream::Stream) -> f64 {
    for r in [stream.avg_frame_rate(), stream.rate()] {
        if r.numerator() > 0 && r.denominator() > 0 {
            let fps = f64::from(r);
            if fps.is_finite() && fps > 0.0 && fps < 1000.0 {
                return fps;
            }
        }
    }
    25.0
}

/// A file opened for decoding: its demuxer, the chosen video stream and its decoder.
pub(crate) struct Opened {
    pub input: ffmpeg::format::context::Input,
    pub stream_index: usize,
    pub time_base: [i32; 2],
    pub decoder: ffmpeg::decoder::Video,
    pub info: VideoInfo,
}

/// Opens `path`'s best video stream with a decoder (`info.frames` is 0 until frames are
/// decoded); errors name the file and what is wrong with it.
pub(crate) fn open(path: &Path) -> Result<Opened> {
    init();
    match std::fs::metadata(path) {
        Err(source) => {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(m) if m.is_dir() => {
            return Err(decode_error(path, "is a directory, not a video or image"))
        }
        Ok(m) if m.len() == 0 => return Err(decode_error(path, "empty file")),
        Ok(_) => {}
    }
    let input = ffmpeg::format::input(&path)
        .map_err(|e| decode_error(path, format!("not a readable video or image ({e})")))?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| decode_error(path, "no video stream (not a video or image?)"))?;
    let stream_index = stream.index();
    let tb = stream.time_base();
    let time_base = [tb.numerator(), tb.denominator()];
    let fps = rate_of(&stream);
    let header_frames = u64::try_from(stream.frames()).ok().filter(|&n| n > 0);
    let mut context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| decode_error(path, format!("bad codec parameters ({e})")))?;
    context.set_threading(ffmpeg::codec::threading::Config {
        kind: ffmpeg::codec::threading::Type::Frame,
        count: DECODER_THREADS.load(Ordering::Relaxed),
        ..Default::default()
    });
    let codec_id = context.id();
    let decoder = context
        .decoder()
        .video()
        .map_err(|e| decode_error(path, format!("unsupported codec {} ({e})", codec_id.name())))?;
    let container = input.format().name().to_string();
    Ok(Opened {
        stream_index,
        time_base,
        decoder,
        info: VideoInfo {
            container,
            codec: codec_id.name().to_string(),
            width: 0,
            height: 0,
            fps,
            frames: 0,
            header_frames,
            corrupt_packets: 0,
        },
        input,
    })
}

/// Decodes the frames of the first video stream in order, calling `on_frame(index, frame,
/// header frame count)` for each, up to frame `last` when given (then it stops reading);
/// returns what the file holds, its time base and whether it was decoded to its end.
fn for_each_frame(
    path: &Path,
    last: Option<usize>,
    mut on_frame: impl FnMut(usize, &ffmpeg::frame::Video, Option<u64>) -> Result<()>,
) -> Result<(VideoInfo, [i32; 2], bool)> {
    let Opened {
        mut input,
        stream_index,
        time_base,
        mut decoder,
        mut info,
    } = open(path)?;
    let mut frame = ffmpeg::frame::Video::empty();
    let done = |info: &VideoInfo| last.is_some_and(|l| info.frames > l);
    let mut drain = |decoder: &mut ffmpeg::decoder::Video, info: &mut VideoInfo| -> Result<()> {
        while !done(info) && decoder.receive_frame(&mut frame).is_ok() {
            if frame.width() == 0 || frame.height() == 0 {
                continue;
            }
            if info.frames == 0 {
                info.width = frame.width();
                info.height = frame.height();
            }
            on_frame(info.frames, &frame, info.header_frames)?;
            info.frames += 1;
        }
        Ok(())
    };
    let mut packets = 0usize;
    loop {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            // A damaged container: keep what decoded so far (checked below).
            Err(_) => break,
        }
        packets += 1;
        if packets > MAX_PACKETS {
            return Err(decode_error(
                path,
                format!("more than {MAX_PACKETS} packets; refusing to go on"),
            ));
        }
        if packet.stream() != stream_index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            info.corrupt_packets += 1;
        }
        drain(&mut decoder, &mut info)?;
        if done(&info) {
            return Ok((info, time_base, false));
        }
    }
    let _ = decoder.send_eof();
    drain(&mut decoder, &mut info)?;
    if done(&info) {
        return Ok((info, time_base, false));
    }
    if info.frames == 0 {
        let why = if info.corrupt_packets > 0 {
            format!(
                "no decodable frame ({} corrupt packets)",
                info.corrupt_packets
            )
        } else {
            "no decodable frame".to_string()
        };
        return Err(decode_error(path, why));
    }
    Ok((info, time_base, true))
}

/// Opens `path`, decodes every frame and reports what it holds (no pixel conversion).
pub fn probe(path: impl AsRef<Path>) -> Result<VideoInfo> {
    Ok(for_each_frame(path.as_ref(), None, |_, _, _| Ok(()))?.0)
}

/// Decodes `path` to RGB24 at `size`, keeping the frames for which `keep(index)` is true.
pub fn decode_frames(
    path: impl AsRef<Path>,
    size: FrameSize,
    keep: impl FnMut(usize) -> bool,
) -> Result<Frames> {
    decode_kept(path.as_ref(), size, keep, false, None)
}

/// [`decode_frames`] of frames `0..=last` only: reading stops once frame `last` is decoded,
/// so a clip near the start of a long file costs what it needs. The kept frames are those
/// [`decode_frames`] keeps; `complete` says whether the file ended first.
pub fn decode_frames_until(
    path: impl AsRef<Path>,
    size: FrameSize,
    keep: impl FnMut(usize) -> bool,
    last: usize,
) -> Result<Frames> {
    decode_kept(path.as_ref(), size, keep, false, Some(last))
}

/// [`decode_frames`]; `keep_all` promises that every frame is kept, so the buffer is sized
/// from the header's frame count up front; `last` stops after that frame. A decode to the end
/// also returns the file's [`SeekIndex`] when its timestamps allow seeking.
fn decode_kept(
    path: &Path,
    size: FrameSize,
    mut keep: impl FnMut(usize) -> bool,
    keep_all: bool,
    last: Option<usize>,
) -> Result<Frames> {
    let mut out = Converter::new(size);
    let mut pts: Vec<Option<i64>> = Vec::new();
    let mut key_frames = Vec::new();
    let (info, time_base, complete) = for_each_frame(path, last, |index, frame, header_frames| {
        out.see(frame, header_frames.filter(|_| keep_all));
        pts.push(frame.timestamp());
        if frame.is_key() {
            key_frames.push(index);
        }
        if keep(index) {
            out.keep(path, index, frame)?;
        }
        Ok(())
    })?;
    let seek_index = complete
        .then(|| SeekIndex::new(time_base, &pts, key_frames))
        .flatten();
    Ok(out.finish(info, complete, seek_index))
}

/// Decodes every frame of `path` to RGB24 at `size`.
pub fn decode(path: impl AsRef<Path>, size: FrameSize) -> Result<Frames> {
    decode_kept(path.as_ref(), size, |_| true, true, None)
}
