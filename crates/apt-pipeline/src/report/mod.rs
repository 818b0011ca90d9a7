//! The run's evaluation and `report.md`: every generator on the same held-out prompts
//! (`metrics.json`), loss curves as PNG plots (`plots/`) and side-by-side GIFs (`samples/`).
//! Everything is computed before anything is written, so an interrupted evaluation leaves the
//! previous report as it was.

pub mod plots;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use apt_flow::train::MetricsLog;
use apt_gan::AdversarialLoss;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::{io_error, Result};
use crate::eval::{
    evaluate_any_data, evaluate_run, side_by_side, EvaluatedModel, RunModels, TeacherFdReport,
};
use crate::run_dir::{write_atomically, write_json, RunDir, Stage};
use plots::{draw_panels, Panel, Series};
pub use table::{markdown_table, table, verdict};

/// `metrics.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunMetrics {
    /// One row per generator.
    pub models: Vec<EvaluatedModel>,
    /// Seconds each stage's training took (from its `metrics.jsonl`).
    pub stage_seconds: Vec<(String, f64)>,
    /// Runs on other data than moving shapes: the teacher-feature Fréchet distance of every
    /// generator to real clips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_features: Option<TeacherFdReport>,
}

/// `(step, field)` of a stage's `metrics.jsonl`, the last line per step.
pub(crate) fn curve(dir: &RunDir, stage: Stage, field: &str) -> Vec<(f64, f64)> {
    MetricsLog::read(&dir.stage_metrics(stage))
        .iter()
        .filter_map(|m| {
            let v = m.values.get(field).copied().flatten()?;
            Some((m.step as f64, v))
        })
        .collect()
}

/// Training seconds of a stage: its last logged `seconds` (time since the stage's start; a
/// resumed stage counts from its resume).
/// The stage's training time, over every run of it (a resumed stage counts each part).
fn stage_seconds(dir: &RunDir, stage: Stage) -> Option<f64> {
    MetricsLog::training_seconds(&dir.stage_metrics(stage))
}

fn series(label: &str, points: Vec<(f64, f64)>) -> Option<Series> {
    (!points.is_empty()).then(|| Series {
        label: label.into(),
        points,
    })
}

/// Writes `plots/losses.png` (flow losses) and `plots/apt.png` (G and D losses titled by the
/// run's loss pair, aR1 and aR2, D(real)/D(fake)).
fn write_plots(run: &RunConfig, dir: &RunDir) -> std::result::Result<Vec<PathBuf>, String> {
    let plots = dir.plots_dir();
    std::fs::create_dir_all(&plots).map_err(|e| format!("{}: {e}", plots.display()))?;
    let mut written = Vec::new();
    let flow: Vec<Panel> = [
        (Stage::Pretrain, "teacher: rectified-flow loss"),
        (Stage::Distill, "distillation: one-step loss"),
        (Stage::Consistency, "consistency distillation loss"),
    ]
    .into_iter()
    .filter_map(|(stage, title)| {
        series("loss", curve(dir, stage, "loss")).map(|s| Panel {
            title: title.into(),
            series: vec![s],
            log_y: true,
        })
    })
    .collect();
    if !flow.is_empty() {
        let path = plots.join("losses.png");
        draw_panels(&path, &flow, flow.len().min(3))?;
        written.push(path);
    }
    if dir.stage_metrics(Stage::Apt).is_file() {
        let loss = run.apt.as_ref().map(|a| a.method.loss).unwrap_or_default();
        let panels = apt_panels(loss, |field| curve(dir, Stage::Apt, field));
        let path = plots.join("apt.png");
        draw_panels(&path, &panels, 2)?;
        written.push(path);
    }
    Ok(written)
}

/// The panels of `plots/apt.png` for a run trained with the `loss` pair, from its curves
/// (`curve(field)`): G's and D's losses titled by that pair, the penalties (aR2 when logged),
/// D's logits.
fn apt_panels(loss: AdversarialLoss, curve: impl Fn(&str) -> Vec<(f64, f64)>) -> Vec<Panel> {
    let (g_title, d_title) = match loss {
        AdversarialLoss::NonSaturating => (
            "APT: generator loss (non-saturating)",
            "APT: discriminator loss (non-saturating, BCE)",
        ),
        AdversarialLoss::Relativistic => (
            "APT: generator loss (relativistic)",
            "APT: discriminator loss (relativistic pairing)",
        ),
        AdversarialLoss::Hinge => (
            "APT: generator loss (hinge: −D(fake))",
            "APT: discriminator loss (hinge)",
        ),
    };
    let penalties: Vec<Series> = [
        series("aR1 (real)", curve("ar1")),
        series("aR2 (fake)", curve("ar2")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let penalty_title = if penalties.len() > 1 {
        "APT: λ·approximated R1 and R2"
    } else {
        "APT: λ·approximated R1"
    };
    vec![
        Panel {
            title: g_title.into(),
            series: series("G", curve("g_loss")).into_iter().collect(),
            log_y: false,
        },
        Panel {
            title: d_title.into(),
            series: series("D", curve("d_loss")).into_iter().collect(),
            log_y: false,
        },
        Panel {
            title: penalty_title.into(),
            series: penalties,
            log_y: true,
        },
        Panel {
            title: "APT: D logits".into(),
            series: [
                series("D(real)", curve("d_real")),
                series("D(fake)", curve("d_fake")),
            ]
            .into_iter()
            .flatten()
            .collect(),
            log_y: false,
        },
    ]
}

/// What a latent-space run's table means: the models generate VAE latents, decoded before
/// scoring; the VAE's own reconstruction PSNR bounds what they can show.
fn latent_paragraph(dir: &RunDir, vae: &Path) -> String {
    let mut md = format!(
        "**Latent space.** Every generator above works on the latents of the VAE `{}`; its clips \
         are decoded before they are scored.",
        vae.display()
    );
    let report = std::fs::read_to_string(dir.stage_report(Stage::Vae))
        .ok()
        .and_then(|t| serde_json::from_str::<crate::stages::VaeReport>(&t).ok());
    if let Some(r) = report {
        md.push_str(&format!(
            " Trained here ({} updates, {} parameters, latents {:?}), it reconstructs {} \
             held-out clips at {:.2} dB PSNR (95% interval {:.2}–{:.2}; {}), mean absolute error \
             {:.4}: the real renders passed through it score no better than that, so neither \
             can a generator.",
            r.steps,
            r.parameters,
            r.latent_shape,
            r.val_clips,
            r.psnr,
            r.psnr_interval[0],
            r.psnr_interval[1],
            r.val_source,
            r.l1
        ));
    }
    md.push_str("\n\n");
    md
}

fn relative(dir: &RunDir, path: &Path) -> String {
    path.strip_prefix(dir.root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Evaluates the run, writes `metrics.json`, the plots, the GIFs and `report.md`, and returns
/// the report's path and the metrics. `progress(done, total, name)` follows the evaluation;
/// raising `stop` ends it with [`crate::PipelineError::Interrupted`] before anything is
/// written.
pub fn evaluate_and_write(
    run: &RunConfig,
    dir: &RunDir,
    stop: &AtomicBool,
    progress: impl FnMut(usize, usize, &str),
) -> Result<(PathBuf, RunMetrics)> {
    tracing::info!(prompts = run.report.prompts, "evaluating every generator");
    run.apply_threads();
    crate::preflight::check_device(run.device()?, "device")?;
    let models = RunModels::load(run, dir)?;
    if models.is_empty() {
        return Err(crate::PipelineError::File {
            path: dir.root().to_path_buf(),
            reason: "holds no exported model yet (no teacher, student or generator): train the \
                     run first (`apt train --config …`)"
                .into(),
        });
    }
    // The attribute estimator reads moving shapes only; other data get curves and no table.
    let benchmark = run.data.shapes().is_some();
    let (rows, strips, teacher_features) = if benchmark {
        let rows = evaluate_run(run, &models, stop, progress)?;
        let strips = side_by_side(run, &models, run.report.gifs, &run.report.teacher, stop)?;
        (rows, strips, None)
    } else {
        match evaluate_any_data(run, &models, stop, progress)? {
            Some((fd, strips)) => (Vec::new(), strips, Some(fd)),
            None => {
                tracing::warn!(
                    "no teacher to read features with and no moving shapes: writing curves only"
                );
                (Vec::new(), Vec::new(), None)
            }
        }
    };
    let stage_seconds: Vec<(String, f64)> = [
        Stage::Vae,
        Stage::Pretrain,
        Stage::Distill,
        Stage::Consistency,
        Stage::Apt,
    ]
    .into_iter()
    .filter_map(|s| stage_seconds(dir, s).map(|t| (s.name().to_string(), t)))
    .collect();
    let metrics = RunMetrics {
        models: rows,
        stage_seconds,
        teacher_features,
    };
    write_json(&dir.metrics_file(), &metrics)?;
    // A machine without the font still gets its report (the numbers), with a note.
    let (plots, plot_note) = match write_plots(run, dir) {
        Ok(p) => (p, None),
        Err(e) => {
            let e = format!("drawing the loss curves: {e}");
            tracing::warn!("{e}; the report has no plots");
            (Vec::new(), Some(e))
        }
    };
    let samples = dir.samples_dir();
    std::fs::create_dir_all(&samples).map_err(io_error(&samples))?;
    let mut gifs = Vec::new();
    for (k, s) in strips.iter().enumerate() {
        let path = samples.join(format!("prompt-{k}.gif"));
        apt_data::write_video(&path, &s.strip, 4.0)?;
        gifs.push((path, s));
    }

    let mut md = String::from("# Run report\n\n");
    if benchmark {
        let teacher_prompts = run.report.teacher_prompts.unwrap_or(run.report.prompts);
        md.push_str(&format!(
            "Run `{}`; {} held-out moving-shapes prompts (evaluation seed {}, not the training \
             seed), one clip each, the same noise for every generator; the teacher samples with {} \
             Euler steps and CFG {}{}. Intervals: 95% paired bootstrap over {} resamples of the \
             prompts (the same resample for every model), differences against the distilled \
             one-step row. Fréchet distances get the basic (reverse-percentile) interval: a \
             resampled distance is biased upward, and mirroring the resamples around the \
             estimate removes that bias, so an interval may lie mostly below its estimate (the \
             estimate is biased upward too).\n\n",
            run.out.display(),
            run.report.prompts,
            run.report.seed,
            run.report.teacher.steps,
            run.report.teacher.cfg_scale,
            if teacher_prompts < run.report.prompts {
                format!(" on the first {teacher_prompts} prompts only")
            } else {
                String::new()
            },
            run.report.bootstrap,
        ));
        md.push_str(&markdown_table(&metrics.models));
    } else if let Some(fd) = &metrics.teacher_features {
        md.push_str(&table::teacher_fd_table(fd));
    } else {
        md.push_str(
            "No evaluation table: the benchmark's metrics read moving-shapes clips with the \
             attribute estimator, and the run has no teacher to read features with. Use `apt \
             sample` on the stage directories to look at samples.\n",
        );
    }
    if benchmark {
        md.push_str(
            "\n*colour / direction / shape*: share of clips whose main object matches the caption \
             (attribute estimator; chance 1/8, 1/8, 1/3). *sharpness vs real*: edge sharpness over \
             that of the real renders of the same prompts. *Fréchet*: distance between Gaussians fitted \
             to 16 estimator features per clip (colour, background, size, size variation, start, \
             velocity, sharpness, outline moments, colour drift; standardised by the real set) of the \
             generated and the real clips. *start coverage*: share of the real clips' 4×4 start cells \
             the generated clips also start in (mode collapse lowers it). *periodicity*: energy of the \
             component that repeats with the model's patch grid (the mean of all patches, less its \
             mean) over that of the real renders; a patch-grid artefact raises it. *size variation*: \
             area std / mean across frames; *colour drift*: RGB distance of each frame's object \
             colour from its mean. *ms / clip*: generation time per clip in batches of 16.\n\n",
        );
    }
    if let (Some(vae), true) = (crate::latent::vae_dir(run, dir), benchmark) {
        md.push_str(&latent_paragraph(dir, &vae));
    }
    md.push_str("## What APT does here\n\n");
    match (&metrics.teacher_features, benchmark) {
        (Some(fd), false) => md.push_str(&table::teacher_fd_verdict(fd)),
        _ => md.push_str(&verdict(&metrics.models)),
    }
    if !metrics.stage_seconds.is_empty() {
        md.push_str("\nTraining time: ");
        let parts: Vec<String> = metrics
            .stage_seconds
            .iter()
            .map(|(s, t)| format!("{s} {:.1} min", t / 60.0))
            .collect();
        md.push_str(&parts.join(", "));
        md.push_str(".\n");
    }
    md.push_str("\n## Loss curves\n\n");
    if let Some(note) = plot_note {
        md.push_str(&format!("(no plots: {note})\n\n"));
    }
    for p in &plots {
        md.push_str(&format!("![{0}]({0})\n\n", relative(dir, p)));
    }
    md.push_str("## Samples\n\n");
    for (path, s) in &gifs {
        md.push_str(&format!(
            "**{}** — {}\n\n![{}]({})\n\n",
            s.caption,
            s.columns.join(" | "),
            s.caption,
            relative(dir, path)
        ));
    }
    let path = dir.report_file();
    write_atomically(&path, md.as_bytes())?;
    Ok((path, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apt_plot_is_titled_by_the_runs_loss_and_shows_ar2_when_logged() {
        let logged = |fields: &'static [&'static str]| {
            move |f: &str| {
                if fields.contains(&f) {
                    vec![(1.0, 0.5), (2.0, 0.25)]
                } else {
                    Vec::new()
                }
            }
        };
        const ALL: [&str; 6] = ["g_loss", "d_loss", "ar1", "ar2", "d_real", "d_fake"];
        let panels = apt_panels(AdversarialLoss::Relativistic, logged(&ALL));
        let titles: Vec<&str> = panels.iter().map(|p| p.title.as_str()).collect();
        assert!(titles[0].contains("relativistic") && titles[1].contains("relativistic"));
        assert!(!titles
            .iter()
            .any(|t| t.contains("BCE") || t.contains("non-saturating")));
        let labels: Vec<&str> = panels[2].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["aR1 (real)", "aR2 (fake)"]);
        // The paper's recipe logs no aR2.
        let paper = apt_panels(
            AdversarialLoss::NonSaturating,
            logged(&["g_loss", "d_loss", "ar1", "d_real", "d_fake"]),
        );
        assert!(paper[1].title.contains("BCE"));
        assert_eq!(paper[2].series.len(), 1);
        assert_eq!(paper[2].title, "APT: λ·approximated R1");
    }
}
