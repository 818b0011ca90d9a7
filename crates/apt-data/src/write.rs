//! Writing videos out: mp4/mov/mkv (H.264 through FFmpeg's libx264), animated GIF (`gif`),
//! and a PNG frame grid (`image`). Every writer goes through a temporary file in the same
//! directory and renames it into place, so a crash never leaves a half-written video.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{context::Context as Scaler, flag::Flags};
use ffmpeg_next as ffmpeg;
use tch::{Kind, Tensor};

use crate::error::{DataError, Result};
use crate::input::init;

/// Frames per row of a PNG grid.
pub const GRID_COLUMNS: usize = 8;

/// `[3, T, H, W]` in [-1, 1] → RGB24 bytes `[T][H][W][3]` (rounded, clamped).
pub fn video_to_rgb24(video: &Tensor) -> Result<(Vec<u8>, usize, usize, usize)> {
    let size = video.size();
    if size.len() != 4 || size[0] != 3 || size[1] == 0 {
        return Err(DataError::Option {
            key: "video",
            reason: format!("expected [3, T, H, W] with T ≥ 1, got {size:?}"),
        });
    }
    let bytes = ((video
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        + 1.0)
        * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([1, 2, 3, 0])
        .contiguous()
        .view([-1]);
    let data = Vec::<u8>::try_from(bytes)?;
    Ok((data, size[1] as usize, size[2] as usize, size[3] as usize))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}.{ext}", std::process::id()))
}

fn finish(tmp: &Path, path: &Path, result: Result<()>) -> Result<()> {
    let result = result.and_then(|()| {
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| DataError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
        std::fs::rename(tmp, path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Writes `video` (`[3, T, H, W]` in [-1, 1]) to `path`; the extension picks the format:
/// `mp4`/`mov`/`mkv` (H.264), `gif`, `png` (frame grid, [`GRID_COLUMNS`] per row).
pub fn write_video(path: impl AsRef<Path>, video: &Tensor, fps: f64) -> Result<()> {
    let path = path.as_ref();
    if !(fps.is_finite() && fps > 0.0) {
        return Err(DataError::Option {
            key: "fps",
            reason: format!("must be positive, got {fps}"),
        });
    }
    let (rgb, t, h, w) = video_to_rgb24(video)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let tmp = temp_sibling(path);
    let result = match ext.as_str() {
        "mp4" | "mov" | "mkv" => write_h264(&tmp, &rgb, t, h, w, fps),
        "gif" => write_gif(&tmp, &rgb, t, h, w, fps),
        "png" => write_png_grid(&tmp, &rgb, t, h, w),
        other => {
            return Err(DataError::Option {
                key: "out",
                reason: format!(
                    "{}: unknown video extension {other:?} (use mp4, mov, mkv, gif or png)",
                    path.display()
                ),
            })
        }
    };
    finish(&tmp, path, result)
}

fn ffmpeg_error(path: &Path, what: &str) -> impl FnOnce(ffmpeg::Error) -> DataError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |e| DataError::Decode {
        path,
        reason: format!("{what}: {e}"),
    }
}

fn write_h264(path: &Path, rgb: &[u8], t: usize, h: usize, w: usize, fps: f64) -> Result<()> {
    init();
    let (w32, h32) = (w as u32, h as u32);
    // 4:2:0 needs even sizes; odd sizes are kept exactly with 4:4:4.
    let pixel = if w.is_multiple_of(2) && h.is_multiple_of(2) {
        Pixel::YUV420P
    } else {
        Pixel::YUV444P
    };
    let rate = ffmpeg::Rational::new((fps * 1000.0).round() as i32, 1000).reduce();
    let time_base = rate.invert();
    let mut output =
        ffmpeg::format::output(&path).map_err(ffmpeg_error(path, "cannot create the output"))?;
    let codec =
        ffmpeg::encoder::find(ffmpeg::codec::Id::H264).ok_or_else(|| DataError::Decode {
            path: path.to_path_buf(),
            reason: "FFmpeg has no H.264 encoder (libx264)".into(),
        })?;
    let global_header = output
        .format()
        .flags()
        .contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let mut stream = output
        .add_stream(codec)
        .map_err(ffmpeg_error(path, "cannot add a video stream"))?;
    let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(ffmpeg_error(path, "cannot create the encoder"))?;
    encoder.set_width(w32);
    encoder.set_height(h32);
    encoder.set_format(pixel);
    encoder.set_time_base(time_base);
    encoder.set_frame_rate(Some(rate));
    if global_header {
        encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
    }
    let mut options = ffmpeg::Dictionary::new();
    options.set("preset", "veryfast");
    options.set("crf", "16");
    let mut encoder = encoder
        .open_as_with(codec, options)
        .map_err(ffmpeg_error(path, "cannot open the H.264 encoder"))?;
    stream.set_parameters(&encoder);
    stream.set_time_base(time_base);
    output
        .write_header()
        .map_err(ffmpeg_error(path, "cannot write the header"))?;
    let stream_time_base = output.stream(0).expect("one stream").time_base();

    let mut scaler = Scaler::get(Pixel::RGB24, w32, h32, pixel, w32, h32, Flags::BILINEAR)
        .map_err(ffmpeg_error(path, "no RGB→YUV scaler"))?;
    let mut frame = ffmpeg::frame::Video::new(Pixel::RGB24, w32, h32);
    let mut yuv = ffmpeg::frame::Video::empty();
    let drain = |encoder: &mut ffmpeg::encoder::Video,
                 output: &mut ffmpeg::format::context::Output|
     -> Result<()> {
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            // One frame per packet: without a duration the container's average rate is off.
            packet.set_duration(1);
            packet.rescale_ts(time_base, stream_time_base);
            packet
                .write_interleaved(output)
                .map_err(ffmpeg_error(path, "cannot write a packet"))?;
        }
        Ok(())
    };
    let frame_bytes = h * w * 3;
    for i in 0..t {
        let stride = frame.stride(0);
        let plane = frame.data_mut(0);
        for y in 0..h {
            let src = &rgb[i * frame_bytes + y * w * 3..i * frame_bytes + (y + 1) * w * 3];
            plane[y * stride..y * stride + w * 3].copy_from_slice(src);
        }
        scaler
            .run(&frame, &mut yuv)
            .map_err(ffmpeg_error(path, "RGB→YUV conversion failed"))?;
        yuv.set_pts(Some(i as i64));
        encoder
            .send_frame(&yuv)
            .map_err(ffmpeg_error(path, "encoding failed"))?;
        drain(&mut encoder, &mut output)?;
    }
    encoder
        .send_eof()
        .map_err(ffmpeg_error(path, "flushing the encoder failed"))?;
    drain(&mut encoder, &mut output)?;
    output
        .write_trailer()
        .map_err(ffmpeg_error(path, "cannot write the trailer"))
}

fn write_gif(path: &Path, rgb: &[u8], t: usize, h: usize, w: usize, fps: f64) -> Result<()> {
    let io = |source: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let gif_error = |e: gif::EncodingError| DataError::Decode {
        path: path.to_path_buf(),
        reason: format!("GIF encoding failed: {e}"),
    };
    if w > u16::MAX as usize || h > u16::MAX as usize {
        return Err(DataError::Option {
            key: "video",
            reason: format!("GIF frames are at most 65535 wide, got {w}x{h}"),
        });
    }
    let file = BufWriter::new(File::create(path).map_err(io)?);
    let mut encoder = gif::Encoder::new(file, w as u16, h as u16, &[]).map_err(gif_error)?;
    encoder
        .set_repeat(gif::Repeat::Infinite)
        .map_err(gif_error)?;
    let delay = (100.0 / fps).round().clamp(1.0, 65535.0) as u16;
    let n = h * w * 3;
    for i in 0..t {
        let mut frame =
            gif::Frame::from_rgb_speed(w as u16, h as u16, &rgb[i * n..(i + 1) * n], 10);
        frame.delay = delay;
        encoder.write_frame(&frame).map_err(gif_error)?;
    }
    drop(encoder);
    Ok(())
}

fn write_png_grid(path: &Path, rgb: &[u8], t: usize, h: usize, w: usize) -> Result<()> {
    let columns = t.min(GRID_COLUMNS);
    let rows = t.div_ceil(columns);
    let mut grid = image::RgbImage::new((columns * w) as u32, (rows * h) as u32);
    let n = h * w * 3;
    for i in 0..t {
        let (gx, gy) = ((i % columns) * w, (i / columns) * h);
        for y in 0..h {
            for x in 0..w {
                let p = &rgb[i * n + (y * w + x) * 3..i * n + (y * w + x) * 3 + 3];
                grid.put_pixel(
                    (gx + x) as u32,
                    (gy + y) as u32,
                    image::Rgb([p[0], p[1], p[2]]),
                );
            }
        }
    }
    grid.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Decode {
            path: path.to_path_buf(),
            reason: format!("PNG encoding failed: {e}"),
        })
}
