//! Decoding a window of a file by seeking: jump to the key frame at or before the first
//! needed frame (from the file's [`SeekIndex`]), decode up to the last needed one, and tell the
//! frames apart by their timestamps. The frames are those of a decode from the start — the
//! caller falls back to one whenever that cannot be guaranteed: the seek fails or lands after
//! the key frame, a timestamp is unknown to the index, or a frame is missing. Also
//! [`verified_index`], which keeps only the key frames that really are entry points. (The
//! [`SeekIndex`] type is in `frames.rs`, re-exported here.)

use std::path::Path;

use ffmpeg_next as ffmpeg;

use crate::convert::Converter;
use crate::error::Result;
pub use crate::frames::SeekIndex;
use crate::frames::{FrameSize, Frames};
use crate::input::{open, Opened};

/// Frames `first..=last` for which `keep` is true, decoded from the key frame at or before
/// `first`. `Ok(None)` when the window cannot be reached exactly this way (see the module docs)
/// or starts at the first key frame anyway; errors are the file's.
pub fn decode_window(
    path: &Path,
    size: FrameSize,
    mut keep: impl FnMut(usize) -> bool,
    (first, last): (usize, usize),
    index: &SeekIndex,
) -> Result<Option<Frames>> {
    let Some(key) = index.key_frame_before(first) else {
        return Ok(None);
    };
    if key == 0 || last >= index.pts.len() || first > last {
        return Ok(None);
    }
    let Opened {
        mut input,
        stream_index,
        mut decoder,
        mut info,
        ..
    } = open(path)?;
    prime(&mut input, stream_index, &mut decoder);
    let target = index.micros(key);
    if input.seek(target, ..target).is_err() {
        return Ok(None);
    }
    let mut out = Converter::new(size);
    let mut frame = ffmpeg::frame::Video::empty();
    // The next frame expected once decoding has entered at a key frame.
    let mut next: Option<usize> = None;
    let mut receive = |decoder: &mut ffmpeg::decoder::Video| -> Result<Option<bool>> {
        while decoder.receive_frame(&mut frame).is_ok() {
            if frame.width() == 0 || frame.height() == 0 {
                continue;
            }
            let Some(i) = frame.timestamp().and_then(|ts| index.frame_at(ts)) else {
                return Ok(None);
            };
            let expected = match next {
                // Enter at a key frame only; what comes before it may reference frames the
                // seek skipped.
                None if !frame.is_key() => continue,
                None if i > first => return Ok(None),
                None => i,
                // Open-GOP leading frames shown before the key frame: not needed.
                Some(n) if i < n => continue,
                Some(n) => n,
            };
            if i != expected {
                return Ok(None);
            }
            out.see(&frame, None);
            if i >= first && keep(i) {
                out.keep(path, i, &frame)?;
            }
            next = Some(i + 1);
            if i == last {
                return Ok(Some(true));
            }
        }
        Ok(Some(false))
    };
    let mut done = false;
    for (stream, packet) in input.packets() {
        if stream.index() != stream_index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            info.corrupt_packets += 1;
        }
        match receive(&mut decoder)? {
            None => return Ok(None),
            Some(true) => {
                done = true;
                break;
            }
            Some(false) => {}
        }
    }
    if !done {
        let _ = decoder.send_eof();
        if receive(&mut decoder)? != Some(true) {
            return Ok(None);
        }
    }
    info.frames = last + 1;
    Ok(Some(out.finish(info, false, None)))
}

/// Decodes the stream's first packet and drops what it gives, then flushes the decoder: some
/// decoders learn state from the start of a file that no later key frame repeats, e.g. the
/// x264 version in the first frame's SEI, from which FFmpeg's H.264 decoder enables its
/// workarounds for old x264 bugs (a test clip's 4:4:4 IDR frames decode with grey blocks after
/// a plain seek, with `ffmpeg -ss` too). Whether the key frames then really are entry points is
/// still checked, once, by [`verified_index`].
fn prime(
    input: &mut ffmpeg::format::context::Input,
    stream: usize,
    decoder: &mut ffmpeg::decoder::Video,
) {
    let mut frame = ffmpeg::frame::Video::empty();
    if let Some((_, packet)) = input.packets().find(|(s, _)| s.index() == stream) {
        if decoder.send_packet(&packet).is_ok() {
            while decoder.receive_frame(&mut frame).is_ok() {}
        }
    }
    decoder.flush();
}

/// The seek index of a full decode `frames` (every frame kept, in order) with only the key
/// frames that are real entry points: decoding from key frame `k` must reproduce both frame `k`
/// and the last frame before the next key frame (errors from a missing reference propagate to
/// the end of the group), byte for byte. Some files flag frames as key that are not (the open
/// GOPs of the MPEG-2 test clip do not land exactly after a seek); their groups are then
/// reached by decoding from an earlier verified key frame or from the start. Costs about one
/// more decode of the file, once, when it is indexed.
pub fn verified_index(path: &Path, size: FrameSize, frames: &Frames) -> Result<Option<SeekIndex>> {
    let Some(index) = frames.seek_index.as_ref() else {
        return Ok(None);
    };
    let n = index.pts.len();
    if frames.indices.len() != n || frames.indices.iter().enumerate().any(|(k, &i)| k != i) {
        return Ok(None);
    }
    let mut good = vec![0];
    for (j, &key) in index.key_frames.iter().enumerate().filter(|(_, &k)| k > 0) {
        let end = index.key_frames.get(j + 1).map_or(n - 1, |&next| next - 1);
        let single = SeekIndex {
            key_frames: vec![0, key],
            ..index.clone()
        };
        let probe = decode_window(path, size, |i| i == key || i == end, (key, end), &single)?;
        let exact = probe.is_some_and(|p| {
            p.indices
                .iter()
                .enumerate()
                .all(|(slot, &i)| p.frame(slot) == frames.frame(i))
                && p.indices.first() == Some(&key)
                && p.indices.last() == Some(&end)
        });
        if exact {
            good.push(key);
        }
    }
    Ok(Some(SeekIndex {
        key_frames: good,
        ..index.clone()
    }))
}
