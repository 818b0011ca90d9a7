//! `plots/samples.png`: every model of a study on the same few held-out prompts and noise, so
//! that the samples are looked at before the metrics are believed. One row per model (the real
//! renders, the teacher, the distilled one- and two-step, each variant's first seed), one
//! column block per prompt with its frames side by side, 3× nearest-neighbour upscale.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use apt_data::shapes::Split;
use apt_flow::TensorRng;
use tch::{Device, Kind, Tensor};

use super::run::init_stages;
use super::Study;
use crate::error::{PipelineError, Result};
use crate::eval::run::Generation;
use crate::latent::Space;
use crate::run_dir::{load_exported, RunDir, Stage};
use crate::text::TextConditioner;

/// Nearest-neighbour upscale of the picture.
const UPSCALE: i64 = 3;

/// How a row is made.
enum Row {
    Real,
    Teacher,
    Steps(std::path::PathBuf, usize),
}

/// Writes the grid to `path` (PNG) and returns the rows' names, top to bottom.
pub fn write_samples(
    study: &Study,
    path: &Path,
    prompts: usize,
    stop: &AtomicBool,
) -> Result<Vec<String>> {
    let run = &study.shared;
    let shapes = run.data.shapes().ok_or_else(|| {
        crate::error::config_error("data", "a study is evaluated on the moving-shapes data")
    })?;
    let device = run.device()?;
    let text = TextConditioner::for_run(run, device)?;
    let null = text.null()?;
    let shared = RunDir::new(&run.out);
    let space = Space::open(run, &shared)?;
    let student = shared.export_path(init_stages(run)[1]);
    let mut rows = vec![
        ("real".to_string(), Row::Real),
        ("teacher".to_string(), Row::Teacher),
        (
            "distilled one-step".to_string(),
            Row::Steps(student.clone(), 1),
        ),
        ("distilled two-step".to_string(), Row::Steps(student, 2)),
    ];
    for v in &study.config.variants {
        let finished = |r: &&super::StudyRun| {
            r.variant == v.name && RunDir::new(&r.config.out).is_finished(Stage::Apt)
        };
        if let Some(r) = study.runs.iter().find(finished) {
            let path = RunDir::new(&r.config.out).export_path(Stage::Apt);
            rows.push((
                format!("{} seed {}", r.variant, r.seed),
                Row::Steps(path, 1),
            ));
        }
    }
    let (t, h, w) = (
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    );
    let seed = run.report.seed;
    let mut noise = TensorRng::new(seed, 2);
    let mut captions = Vec::new();
    let mut z = Vec::new();
    let mut drawn = Vec::new();
    for i in 0..prompts {
        let d = shapes.draw(seed, i as u64, Split::All)?;
        captions.push(shapes.caption(&d));
        let [c, zt, zh, zw] = space.model_shape([3, t, h, w]);
        z.push(noise.normal(&[1, c, zt, zh, zw], device));
        drawn.push(d);
    }
    let teacher = load_exported(&shared.export_path(Stage::Pretrain), device)?.model;
    let mut row_images = Vec::new();
    for (_, row) in &rows {
        if stop.load(Ordering::SeqCst) {
            return Err(PipelineError::Interrupted);
        }
        let model = match row {
            Row::Steps(path, _) => Some(load_exported(path, device)?.model),
            _ => None,
        };
        let how = match (row, &model) {
            (Row::Teacher, _) => Some(Generation::Teacher(&teacher)),
            (Row::Steps(_, steps), Some(m)) => Some(Generation::Steps(m, *steps)),
            _ => None,
        };
        let mut cells = Vec::new();
        for (i, caption) in captions.iter().enumerate() {
            let clip = match &how {
                None => shapes.render(&drawn[i]).to_kind(Kind::Float),
                Some(how) => {
                    let cond = text.batch(std::slice::from_ref(caption), &[])?;
                    let x = how.generate(&z[i], &cond, &null, &run.report.teacher)?;
                    space.to_pixels(&x)?.get(0)
                }
            };
            // [3, T, H, W] → frames side by side, 1 white pixel apart: [3, H, T·W + T − 1].
            let clip = clip.to_device(Device::Cpu).clamp(-1.0, 1.0);
            let mut frames = Vec::new();
            for f in 0..t {
                if f > 0 {
                    frames.push(Tensor::ones([3, h, 1], (Kind::Float, Device::Cpu)));
                }
                frames.push(clip.select(1, f));
            }
            cells.push(Tensor::cat(&frames, 2));
        }
        let mut parts = Vec::new();
        for (k, cell) in cells.into_iter().enumerate() {
            if k > 0 {
                parts.push(Tensor::ones([3, h, 3], (Kind::Float, Device::Cpu)));
            }
            parts.push(cell);
        }
        row_images.push(Tensor::cat(&parts, 2));
    }
    let width = row_images[0].size()[2];
    let mut parts = Vec::new();
    for (k, image) in row_images.into_iter().enumerate() {
        if k > 0 {
            parts.push(Tensor::ones([3, 3, width], (Kind::Float, Device::Cpu)));
        }
        parts.push(image);
    }
    let grid = Tensor::cat(&parts, 1)
        .repeat_interleave_self_int(UPSCALE, Some(1), None)
        .repeat_interleave_self_int(UPSCALE, Some(2), None)
        .unsqueeze(1);
    apt_data::write_video(path, &grid, 1.0)?;
    Ok(rows.into_iter().map(|(name, _)| name).collect())
}
