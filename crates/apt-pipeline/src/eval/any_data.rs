//! Every generator of a run against real clips with the teacher-feature Fréchet distance
//! ([`super::teacher_fd`]): real clips with their captions (the held-out moving-shapes renders,
//! or clips of the run's files / latents, or of `[report] real`), one generated clip per
//! caption and generator on the same noise, paired bootstrap intervals and the difference to
//! the distilled one-step row, and side-by-side clips real | teacher | students | APT.

use std::sync::atomic::{AtomicBool, Ordering};

use apt_data::shapes::Split;
use apt_data::{ClipSpec, Dataset, Loader, LoaderConfig, Placement};
use apt_flow::{sample, Guidance, OneStepGenerator, TensorRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::bootstrap::{Interval, IntervalMethod};
use super::run::{rows, Generation, RunModels, SideBySide};
use super::teacher_fd::{teacher_frechet, TeacherFeatures, FEATURE_TIME};
use crate::config::{default_eval_batch, RunConfig};
use crate::data::DataConfig;
use crate::error::{config_error, PipelineError, Result};
use crate::text::TextConditioner;

/// One generator's teacher-feature Fréchet distance to the real clips.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherFdRow {
    /// The row's name (as in the benchmark table).
    pub name: String,
    /// Network evaluations per clip.
    pub network_evaluations: usize,
    /// The distance on every clip, with its 95% interval.
    pub frechet: Interval,
    /// (this − the reference row), paired, 95%.
    pub vs_reference: Option<Interval>,
    /// FVD to the real clips, with `[report] fvd_i3d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvd: Option<f64>,
}

/// The any-data evaluation of a run (`metrics.json`'s `teacher_features`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherFdReport {
    /// Where the real clips came from.
    pub real: String,
    /// How many clips (and captions).
    pub clips: usize,
    /// The teacher block the features are read at.
    pub tap: usize,
    /// Feature dimensions after the projection.
    pub dim: i64,
    /// The time the clips are noised to.
    pub time: f64,
    /// The distance of the real clips to themselves under other noise: the floor.
    pub floor: f64,
    /// The reference row of the differences.
    pub reference: String,
    /// One row per generator.
    pub rows: Vec<TeacherFdRow>,
    /// The I3D file FVD was computed with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fvd_i3d: Option<String>,
}

/// Real clips in the models' space, as pixels, and their captions.
struct RealClips {
    source: String,
    x: Tensor,
    pixels: Tensor,
    captions: Vec<String>,
}

/// `n` real clips: held-out moving-shapes renders of the evaluation seed, or clips of
/// `report.real` / the run's data set in the evaluation seed's order (centred, deterministic).
fn real_clips(run: &RunConfig, models: &RunModels, n: usize) -> Result<RealClips> {
    let seed = run.report.seed;
    if let (Some(shapes), None) = (run.data.shapes(), &run.report.real) {
        let mut clips = vec![];
        let mut captions = vec![];
        for i in 0..n as u64 {
            let drawn = shapes.draw(seed, i, Split::All)?;
            captions.push(shapes.caption(&drawn));
            clips.push(shapes.render(&drawn).to_kind(Kind::Float));
        }
        let pixels = Tensor::stack(&clips, 0);
        let x = models.space.from_pixels(&pixels.to_device(run.device()?))?;
        return Ok(RealClips {
            source: "held-out moving-shapes renders".into(),
            x: x.to_device(Device::Cpu),
            pixels,
            captions,
        });
    }
    let (path, clip, policy, latents) = match (&run.report.real, &run.data) {
        (
            Some(real),
            DataConfig::Files {
                clip,
                on_bad_sample,
                ..
            },
        ) => (real, *clip, *on_bad_sample, false),
        (
            Some(real),
            DataConfig::Latents {
                shape,
                on_bad_sample,
                ..
            },
        )
        | (
            None,
            DataConfig::Latents {
                path: real,
                shape,
                on_bad_sample,
                ..
            },
        ) => (
            real,
            ClipSpec::eval(shape[1], shape[2] as u32, shape[3] as u32),
            *on_bad_sample,
            true,
        ),
        (
            None,
            DataConfig::Files {
                path,
                clip,
                on_bad_sample,
                ..
            },
        ) => (path, *clip, *on_bad_sample, false),
        (Some(real), DataConfig::Shapes { shapes, .. }) => (
            real,
            ClipSpec::eval(shapes.frames, shapes.height, shapes.width),
            Default::default(),
            false,
        ),
        (None, DataConfig::Shapes { .. }) => unreachable!("handled above"),
    };
    let set = Dataset::open(path, policy)?;
    if set.len() < n {
        return Err(config_error(
            "report.prompts",
            format!(
                "is {n} but {} holds {} clips: the evaluation takes one real clip per caption",
                path.display(),
                set.len()
            ),
        ));
    }
    let clip = ClipSpec {
        offset: Placement::Center,
        crop: Placement::Center,
        ..clip
    };
    let cfg = LoaderConfig {
        shuffle: true,
        on_bad_sample: policy,
        ..LoaderConfig::new(n, 1, seed, clip)
    };
    let batch = Loader::new(set, cfg)?.next_batch()?;
    let (x, pixels) = if latents {
        let x = models.space.normalize(&batch.video)?;
        let pixels = models.space.to_pixels(&x)?.to_device(Device::Cpu);
        (x, pixels)
    } else {
        let x = models
            .space
            .from_pixels(&batch.video.to_device(run.device()?))?;
        (x, batch.video.shallow_clone())
    };
    Ok(RealClips {
        source: path.display().to_string(),
        x: x.to_device(Device::Cpu),
        pixels,
        captions: batch.captions,
    })
}

/// The teacher-feature evaluation of every generator of the run, and side-by-side strips of
/// the first `gifs` captions. `None` when the run has no teacher to read features with.
pub fn evaluate_any_data(
    run: &RunConfig,
    models: &RunModels,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Option<(TeacherFdReport, Vec<SideBySide>)>> {
    let Some(teacher) = &models.teacher else {
        return Ok(None);
    };
    let report = &run.report;
    let device = run.device()?;
    let text = TextConditioner::for_run(run, device)?;
    let empty = text.batch(&[String::new()], &[false])?;
    let features = TeacherFeatures::new(teacher, empty, report.feature_dim, report.seed, device);
    let real = real_clips(run, models, report.prompts)?;
    let n = real.captions.len();
    let i3d = report
        .fvd_i3d
        .as_deref()
        .map(|p| super::fvd::I3d::load(p, device))
        .transpose()?;
    let real_i3d = i3d.as_ref().map(|m| m.features(&real.pixels)).transpose()?;
    let mut fvds: Vec<Option<f64>> = vec![];
    let real_features = features.of(&real.x, 0, 0)?;
    let floor_features = features.of(&real.x, 0, 1)?;
    let floor = teacher_frechet(&floor_features, &real_features, "report.prompts")?;

    let planned = rows(models, &report.teacher);
    let shape: Vec<i64> = real.x.size()[1..].to_vec();
    let gifs = report.gifs.min(n);
    let mut strips: Vec<Vec<Tensor>> = (0..gifs).map(|i| vec![real.pixels.get(i as i64)]).collect();
    let mut columns = vec!["real".to_string()];
    let mut generated: Vec<(String, usize, Tensor)> = vec![];
    for (name, nfe, how) in &planned {
        let mut feats = vec![];
        let mut i3d_feats = vec![];
        for first in (0..n).step_by(default_eval_batch()) {
            if stop.load(Ordering::SeqCst) {
                return Err(PipelineError::Interrupted);
            }
            let count = default_eval_batch().min(n - first);
            let z: Vec<Tensor> = (first..first + count)
                .map(|i| TensorRng::new(report.seed, 100 + i as u64).normal(&shape, device))
                .collect();
            let z = Tensor::stack(&z, 0);
            let cond = text.batch(&real.captions[first..first + count], &[])?;
            let nulls = text.batch(&vec![null_caption(&text); count], &[])?;
            let x = tch::no_grad(|| -> apt_flow::Result<Tensor> {
                match how {
                    Generation::Teacher(m) => {
                        let g = Guidance {
                            cond: &cond,
                            uncond: Some(&nulls),
                            scale: report.teacher.cfg_scale,
                        };
                        sample(*m, &z, &g, &report.teacher)
                    }
                    Generation::Steps(m, 1) => OneStepGenerator::new(*m).generate(&z, &cond),
                    Generation::Steps(m, k) => {
                        OneStepGenerator::new(*m).generate_steps(&z, &cond, *k)
                    }
                }
            })?;
            feats.push(features.of(&x, first as u64, 0)?);
            if let Some(m) = &i3d {
                i3d_feats.push(m.features(&models.space.to_pixels(&x)?)?);
            }
            if first < gifs && matches!(how, Generation::Teacher(_) | Generation::Steps(_, 1)) {
                let pixels = models.space.to_pixels(&x)?.to_device(Device::Cpu);
                for (k, strip) in strips.iter_mut().enumerate().skip(first).take(count) {
                    strip.push(pixels.get((k - first) as i64));
                }
            }
        }
        if matches!(how, Generation::Teacher(_) | Generation::Steps(_, 1)) && gifs > 0 {
            columns.push(name.clone());
        }
        generated.push((name.clone(), *nfe, Tensor::cat(&feats, 0)));
        fvds.push(
            real_i3d
                .as_ref()
                .map(|r| super::metrics::frechet_distance(&Tensor::cat(&i3d_feats, 0), r)),
        );
        progress(generated.len(), planned.len(), name);
    }

    let reference = generated
        .iter()
        .position(|(n, _, _)| n == "distilled one-step")
        .or_else(|| {
            generated
                .iter()
                .position(|(n, _, _)| n.ends_with("one-step"))
        })
        .unwrap_or(0);
    let rows = bootstrap_rows(
        &generated,
        &real_features,
        reference,
        report.bootstrap,
        report.seed,
    )?;
    let fd_report = TeacherFdReport {
        real: real.source,
        clips: n,
        tap: features.tap(),
        dim: features.dim(),
        time: FEATURE_TIME,
        floor,
        reference: generated
            .get(reference)
            .map(|g| g.0.clone())
            .unwrap_or_default(),
        rows,
        fvd_i3d: report.fvd_i3d.as_ref().map(|p| p.display().to_string()),
    };
    let strips = strips
        .into_iter()
        .zip(&real.captions)
        .map(|(clips, caption)| side_by_side_strip(caption, &columns, &clips))
        .collect();
    Ok(Some((fd_report, strips)))
}

/// The caption guidance's unconditional half uses (the negative prompt).
fn null_caption(text: &TextConditioner) -> String {
    text.negative_prompt().to_string()
}

/// Each row's distance with its interval and the paired difference to `reference`, over
/// `draws` resamples of the clips (the same resample for every row and the real set).
fn bootstrap_rows(
    generated: &[(String, usize, Tensor)],
    real: &Tensor,
    reference: usize,
    draws: usize,
    seed: u64,
) -> Result<Vec<TeacherFdRow>> {
    let n = real.size()[0];
    let estimates: Vec<f64> = generated
        .iter()
        .map(|(_, _, f)| teacher_frechet(f, real, "report.prompts"))
        .collect::<Result<_>>()?;
    let mut per_row: Vec<Vec<f64>> = vec![vec![]; generated.len()];
    let mut diffs: Vec<Vec<f64>> = vec![vec![]; generated.len()];
    let mut rng = TensorRng::new(seed, 13);
    for _ in 0..draws {
        let idx = (rng.uniform(&[n], Device::Cpu) * n as f64)
            .to_kind(Kind::Int64)
            .clamp(0, n - 1);
        let r = real.index_select(0, &idx);
        let values: Vec<f64> = generated
            .iter()
            .map(|(_, _, f)| super::metrics::frechet_distance(&f.index_select(0, &idx), &r))
            .collect();
        for (k, v) in values.iter().enumerate() {
            per_row[k].push(*v);
            diffs[k].push(v - values[reference]);
        }
    }
    Ok(generated
        .iter()
        .enumerate()
        .map(|(k, (name, nfe, _))| TeacherFdRow {
            name: name.clone(),
            network_evaluations: *nfe,
            frechet: Interval::with_method(
                estimates[k],
                per_row[k].clone(),
                IntervalMethod::for_metric("frechet"),
            ),
            vs_reference: (k != reference && draws > 0).then(|| {
                Interval::with_method(
                    estimates[k] - estimates[reference],
                    diffs[k].clone(),
                    IntervalMethod::for_difference("frechet"),
                )
            }),
            fvd: None,
        })
        .collect())
}

/// Clips `[3, T, H, W]` side by side, 2 white pixels apart.
fn side_by_side_strip(caption: &str, columns: &[String], clips: &[Tensor]) -> SideBySide {
    let size = clips[0].size();
    let gap = Tensor::ones([3, size[1], size[2], 2], (Kind::Float, Device::Cpu));
    let mut parts = vec![];
    for (k, clip) in clips.iter().enumerate() {
        if k > 0 {
            parts.push(gap.shallow_clone());
        }
        parts.push(
            clip.to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .clamp(-1.0, 1.0),
        );
    }
    SideBySide {
        caption: caption.to_string(),
        columns: columns.to_vec(),
        strip: Tensor::cat(&parts, 3),
    }
}
