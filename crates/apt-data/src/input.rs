//! Opening a file for decoding with FFmpeg (`ffmpeg-next` on the system's libavformat and
//! libavcodec): process-wide initialisation and log level, and [`open`], which finds a file's
//! best video stream and its decoder for the whole-file decoder
//! ([`crate::decode`](mod@crate::decode)) and the seeking one ([`crate::seek`]).

use std::path::Path;
use std::sync::Once;

use ffmpeg_next as ffmpeg;

use crate::error::{decode_error, DataError, Result};
use crate::frames::VideoInfo;

static INIT: Once = Once::new();

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

/// The stream's frame rate: its average rate, else its base rate, else 25.
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
        // FFmpeg's automatic choice of thread count, like the `ffmpeg` tool.
        count: 0,
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
