//! The decoder entry point on arbitrary bytes: `apt_data::probe` must return Ok or an error,
//! never crash or hang. FFmpeg reads files, so the input goes to a per-process temporary file
//! whose extension (picked by the first byte) also steers FFmpeg's format guess.

#![no_main]

use libfuzzer_sys::fuzz_target;

const EXTENSIONS: &[&str] = &["bin", "mp4", "mkv", "webm", "avi", "mpg", "ogv", "gif", "png", "jpg", "mov"];

fuzz_target!(|data: &[u8]| {
    apt_data::decode::quiet_ffmpeg_log();
    let ext = EXTENSIONS[data.first().copied().unwrap_or(0) as usize % EXTENSIONS.len()];
    let path = std::env::temp_dir().join(format!("apt-data-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, data).expect("temp file");
    if let Err(e) = apt_data::probe(&path) {
        assert!(e.to_string().contains("apt-data-fuzz"), "errors name the file: {e}");
    }
    let _ = std::fs::remove_file(&path);
});
