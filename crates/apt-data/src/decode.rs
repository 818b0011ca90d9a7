//! Decoding whole videos and images in process with FFmpeg, from the start of the file:
//! [`probe`], [`decode`], [`decode_frames`] and [`decode_frames_until`]. The types they return
//! ([`FrameSize`], [`Frames`], [`VideoInfo`], [`SeekIndex`]) live in `frames.rs`, FFmpeg's
//! setup ([`init`], [`quiet_ffmpeg_log`]) and opening a file in `input.rs`; both are
//! re-exported here. Conversion to RGB is in `convert.rs`; decoding a window by seeking is
//! [`crate::seek`].
//!
//! Lessons built in: the scaler is built from *each decoded frame's own* pixel format and size
//! (a Theora clip can decode at 214×160 inside a 224×160 container, and streams may change
//! size); frames are counted by decoding, never taken from the header (an AVI can claim 444
//! and decode 68); FFmpeg's own log is limited to errors. Packets the decoder rejects are
//! skipped and counted, as the `ffmpeg` tool does; a file with no decodable frame is an error.

use std::path::Path;

use ffmpeg_next as ffmpeg;

use crate::convert::Converter;
use crate::error::{decode_error, Result};
pub use crate::frames::{FrameSize, Frames, SeekIndex, VideoInfo};
pub use crate::input::{init, quiet_ffmpeg_log};
use crate::input::{open, Opened};

/// Stop reading after this many packets: a guard against pathological inputs that never end.
const MAX_PACKETS: usize = 5_000_000;

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
