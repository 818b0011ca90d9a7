//! Bad input never panics or hangs: real clips mutated (truncated, bytes flipped, spliced,
//! chunks deleted or duplicated) into more than 1,000 files, plus empty, random, zero-filled,
//! wrong-extension and directory inputs. Every case either decodes to something sane or fails
//! with an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use apt_data::{assets, decode::quiet_ffmpeg_log, load_clip, probe, ClipSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SOURCES: &[&str] = &[
    "realshort.mp4",
    "newtonscradle.gif",
    "derived/bikes_vp9.webm",
    "derived/bikes_vp8.mkv",
    "derived/bikes_mpeg4.avi",
    "derived/bikes_mjpeg.avi",
    "derived/bikes_cinepak.avi",
    "derived/bikes_mpeg1.mpg",
    "derived/bikes_theora.ogv",
    "derived/bikes_h264.mov",
    "derived/chelsea.jpg",
];
const CASES_PER_SOURCE: usize = 96;

fn mutate(bytes: &[u8], rng: &mut ChaCha8Rng) -> (String, Vec<u8>) {
    let n = bytes.len();
    let mut out = bytes.to_vec();
    match rng.gen_range(0..6) {
        0 => {
            let cut = rng.gen_range(0..n);
            out.truncate(cut);
            (format!("truncate@{cut}"), out)
        }
        1 => {
            let flips = rng.gen_range(1..64);
            for _ in 0..flips {
                let i = rng.gen_range(0..n);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            (format!("flip×{flips}"), out)
        }
        2 => {
            let (from, to, len) = (
                rng.gen_range(0..n),
                rng.gen_range(0..n),
                rng.gen_range(1..4096.min(n)),
            );
            let chunk: Vec<u8> = bytes[from..(from + len).min(n)].to_vec();
            let end = (to + chunk.len()).min(n);
            out[to..end].copy_from_slice(&chunk[..end - to]);
            (format!("splice {from}->{to}"), out)
        }
        3 => {
            let (at, len) = (rng.gen_range(0..n), rng.gen_range(1..8192));
            out.drain(at..(at + len).min(n));
            (format!("delete {at}+{len}"), out)
        }
        4 => {
            let (at, len) = (rng.gen_range(0..n), rng.gen_range(1..2048));
            let noise: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            out.splice(at..at, noise);
            (format!("insert {at}+{len}"), out)
        }
        _ => {
            let header = rng.gen_range(1..(n / 4).max(2));
            for b in out.iter_mut().skip(header) {
                *b = rng.gen();
            }
            (format!("randomise after {header}"), out)
        }
    }
}

/// Runs `check` on `path` in a thread with a deadline: a hang fails the test.
fn within_deadline(path: &Path, label: &str) {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| check(&p));
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("{label}: panicked"),
        Err(_) => panic!("{label}: no answer within 60 s (hang)"),
    }
}

fn check(path: &PathBuf) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    match probe(path) {
        Ok(info) => {
            assert!(
                info.frames >= 1 && info.width > 0 && info.height > 0,
                "{name}: {info:?}"
            );
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            match load_clip(path, &ClipSpec::eval(1, 8, 8), &mut rng, None) {
                Ok(clip) => {
                    assert_eq!(clip.video.size(), vec![3, 1, 8, 8]);
                    let (lo, hi) = (
                        clip.video.min().double_value(&[]),
                        clip.video.max().double_value(&[]),
                    );
                    assert!(lo >= -1.0 && hi <= 1.0, "{name}: values {lo}..{hi}");
                }
                Err(e) => assert!(
                    e.to_string().contains(&name),
                    "{name}: error does not name the file: {e}"
                ),
            }
        }
        Err(e) => assert!(
            e.to_string().contains(&name),
            "{name}: error does not name the file: {e}"
        ),
    }
}

#[test]
fn a_thousand_mutated_clips_never_panic_or_hang() {
    quiet_ffmpeg_log();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2025);
    let (mut cases, mut decoded) = (0, 0);
    for source in SOURCES {
        let bytes = std::fs::read(assets::clip(source).unwrap()).unwrap();
        let ext = Path::new(source)
            .extension()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for k in 0..CASES_PER_SOURCE {
            let (how, data) = mutate(&bytes, &mut rng);
            let path = dir.path().join(format!("case{cases:05}.{ext}"));
            std::fs::write(&path, &data).unwrap();
            within_deadline(&path, &format!("{source} #{k} ({how})"));
            decoded += usize::from(probe(&path).is_ok());
            cases += 1;
        }
    }
    eprintln!(
        "{cases} mutated files: {decoded} still decode, {} rejected with an error naming the file",
        cases - decoded
    );
    assert!(cases >= 1000);
    assert!(
        decoded > 0 && decoded < cases,
        "the mutations must produce both outcomes"
    );
}

#[test]
fn degenerate_inputs_are_clear_errors() {
    quiet_ffmpeg_log();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let random: Vec<u8> = (0..50_000).map(|_| rng.gen()).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.mp4", vec![], "empty file"),
        ("random.mp4", random.clone(), "not a readable video"),
        ("random.avi", random, ""),
        ("zeros.webm", vec![0; 10_000], ""),
        ("text.mp4", b"just some text, not a video\n".repeat(100), ""),
    ];
    for (name, data, needle) in cases {
        let path = d.join(name);
        std::fs::write(&path, data).unwrap();
        let err = probe(&path).expect_err(name).to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    // A codec FFmpeg has no decoder for (the Matroska codec id patched to an unknown one).
    let mkv = std::fs::read(assets::clip("derived/bikes_vp8.mkv").unwrap()).unwrap();
    let at = mkv.windows(5).position(|w| w == b"V_VP8").unwrap();
    let mut unknown = mkv.clone();
    unknown[at..at + 5].copy_from_slice(b"V_ZZ8");
    std::fs::write(d.join("unknown.mkv"), unknown).unwrap();
    let err = probe(d.join("unknown.mkv")).unwrap_err().to_string();
    assert!(
        err.contains("unknown.mkv") && err.contains("unsupported codec"),
        "{err}"
    );
    // Zero frames (made by the ffmpeg tool).
    let zero = d.join("zero.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-y", "-v", "error", "-i"])
        .arg(assets::clip("realshort.mp4").unwrap())
        .args(["-frames:v", "0", "-c", "copy"])
        .arg(&zero)
        .status()
        .unwrap();
    assert!(made.success());
    let err = probe(&zero).unwrap_err().to_string();
    assert!(err.contains("zero.mp4"), "{err}");
    // The right bytes behind the wrong extension: decoded by content, or a clear error.
    let mp4_as_gif = d.join("video.gif");
    std::fs::copy(assets::clip("realshort.mp4").unwrap(), &mp4_as_gif).unwrap();
    within_deadline(&mp4_as_gif, "mp4 named .gif");
    let err = probe(d).unwrap_err().to_string();
    assert!(err.contains("directory"), "{err}");
    let err = probe(d.join("absent.mp4")).unwrap_err().to_string();
    assert!(err.contains("absent.mp4"), "{err}");
}
