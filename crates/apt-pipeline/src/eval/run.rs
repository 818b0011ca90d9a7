//! Evaluation of a whole run: every generator it has produced (the teacher with its multi-step
//! CFG sampler, the distilled students in one step, the APT generator in one and two steps) on
//! the same prompts and noise, and side-by-side clips for the report.

use std::sync::atomic::{AtomicBool, Ordering};

use apt_data::shapes::{ShapesConfig, Split};
use apt_flow::{sample, Conditioning, Guidance, OneStepGenerator, SamplerConfig, TensorRng};
use apt_mmdit::Mmdit;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::alignment::{shapes_alignment, AlignmentReport};
use crate::config::{default_eval_batch, default_eval_seed, EvalConfig, RunConfig};
use crate::error::{config_error, PipelineError, Result};
use crate::run_dir::{RunDir, Stage};
use crate::text::TextConditioner;

/// One row of a run's evaluation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluatedModel {
    /// What was evaluated (`teacher (25-step CFG 2)`, `distilled one-step`, …).
    pub name: String,
    /// Network evaluations per clip.
    pub network_evaluations: usize,
    /// Alignment, sharpness, consistency, Fréchet distance and speed.
    pub report: AlignmentReport,
}

/// The generators of a run, loaded from its stage directories (absent stages are `None`).
pub struct RunModels {
    /// `pretrain/teacher.safetensors`.
    pub teacher: Option<Mmdit>,
    /// `distill/student.safetensors`.
    pub distilled: Option<Mmdit>,
    /// `consistency/student.safetensors`.
    pub consistency: Option<Mmdit>,
    /// `apt/generator.safetensors` (the EMA generator).
    pub apt: Option<Mmdit>,
}

impl RunModels {
    /// Loads whatever the run has exported, each checked against its integrity record.
    pub fn load(run: &RunConfig, dir: &RunDir) -> Result<Self> {
        let device = run.device()?;
        let load = |stage| -> Result<Option<Mmdit>> {
            // The model holds its tensors; the store can go.
            Ok(dir.load_model(stage, device)?.map(|m| m.model))
        };
        Ok(Self {
            teacher: load(Stage::Pretrain)?,
            distilled: load(Stage::Distill)?,
            consistency: load(Stage::Consistency)?,
            apt: load(Stage::Apt)?,
        })
    }
}

fn shapes_of(run: &RunConfig) -> Result<&ShapesConfig> {
    run.data
        .shapes()
        .ok_or_else(|| config_error("data", "evaluation needs the moving-shapes benchmark"))
}

fn teacher_sample(
    model: &Mmdit,
    z: &Tensor,
    cond: &Conditioning,
    null: &Conditioning,
    sampler: &SamplerConfig,
) -> apt_flow::Result<Tensor> {
    sample(
        model,
        z,
        &Guidance {
            cond,
            uncond: Some(null),
            scale: sampler.cfg_scale,
        },
        sampler,
    )
}

/// Evaluates every generator the run has produced on `prompts` held-out prompts (the eval
/// seed, not the training seed) with the same noise. Stages that have not run are skipped.
/// `progress(done, total, name)` is called after each generator; raising `stop` ends the
/// evaluation with [`PipelineError::Interrupted`].
pub fn evaluate_run(
    run: &RunConfig,
    models: &RunModels,
    prompts: usize,
    teacher: &SamplerConfig,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<EvaluatedModel>> {
    let total = [&models.teacher, &models.distilled, &models.consistency]
        .iter()
        .filter(|m| m.is_some())
        .count()
        + 2 * usize::from(models.apt.is_some());
    let shapes = shapes_of(run)?;
    let device = run.device()?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let null = text.null()?;
    let eval = EvalConfig {
        prompts,
        seed: default_eval_seed(),
        sampler: *teacher,
        batch: default_eval_batch(),
    };
    let mut rows = Vec::new();
    if let Some(model) = &models.teacher {
        let report = shapes_alignment(shapes, &text, &eval, device, stop, |z, cond| {
            teacher_sample(model, z, cond, &null, teacher)
        })?;
        rows.push(EvaluatedModel {
            name: format!("teacher ({}-step CFG {})", teacher.steps, teacher.cfg_scale),
            network_evaluations: teacher.network_evaluations(),
            report,
        });
        progress(rows.len(), total, &rows[rows.len() - 1].name);
    }
    for (model, label) in [
        (&models.distilled, "distilled"),
        (&models.consistency, "consistency"),
        (&models.apt, "APT"),
    ] {
        let Some(model) = model else { continue };
        let g = OneStepGenerator::new(model);
        let report = shapes_alignment(shapes, &text, &eval, device, stop, |z, c| g.generate(z, c))?;
        rows.push(EvaluatedModel {
            name: format!("{label} one-step"),
            network_evaluations: 1,
            report,
        });
        progress(rows.len(), total, &rows[rows.len() - 1].name);
        if label == "APT" {
            let report = shapes_alignment(shapes, &text, &eval, device, stop, |z, c| {
                g.generate_steps(z, c, 2)
            })?;
            rows.push(EvaluatedModel {
                name: format!("{label} two-step"),
                network_evaluations: 2,
                report,
            });
            progress(rows.len(), total, &rows[rows.len() - 1].name);
        }
    }
    Ok(rows)
}

/// One prompt's clips side by side: the real render, then each generator on the same noise.
#[derive(Debug)]
pub struct SideBySide {
    /// The caption.
    pub caption: String,
    /// Column titles (`real`, `teacher`, `distilled`, `APT`).
    pub columns: Vec<String>,
    /// `[3, T, H, W·columns + gaps]` in [-1, 1], columns separated by 2 white pixels.
    pub strip: Tensor,
}

/// Side-by-side strips for the first `prompts` evaluation prompts (`stop` as in
/// [`evaluate_run`]).
pub fn side_by_side(
    run: &RunConfig,
    models: &RunModels,
    prompts: usize,
    teacher: &SamplerConfig,
    stop: &AtomicBool,
) -> Result<Vec<SideBySide>> {
    let shapes = shapes_of(run)?;
    let device = run.device()?;
    let text = TextConditioner::minilm(&run.text_cache(), run.text.tokens, device)?;
    let null = text.null()?;
    let (t, h, w) = (
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    );
    let mut noise = TensorRng::new(default_eval_seed(), 1);
    let mut out = Vec::new();
    for i in 0..prompts {
        if stop.load(Ordering::SeqCst) {
            return Err(PipelineError::Interrupted);
        }
        let drawn = shapes.draw(default_eval_seed(), i as u64, Split::All)?;
        let caption = shapes.caption(&drawn);
        let cond = text.batch(std::slice::from_ref(&caption), &[])?;
        let z = noise.normal(&[1, 3, t, h, w], device);
        let mut columns = vec!["real".to_string()];
        let mut clips = vec![shapes.render(&drawn).to_kind(tch::Kind::Float)];
        if let Some(m) = &models.teacher {
            columns.push("teacher".into());
            clips.push(teacher_sample(m, &z, &cond, &null, teacher)?.get(0));
        }
        for (model, label) in [
            (&models.distilled, "distilled"),
            (&models.consistency, "consistency"),
            (&models.apt, "APT"),
        ] {
            if let Some(m) = model {
                columns.push(label.into());
                clips.push(OneStepGenerator::new(m).generate(&z, &cond)?.get(0));
            }
        }
        let gap = Tensor::ones([3, t, h, 2], (tch::Kind::Float, Device::Cpu));
        let mut parts = Vec::new();
        for (k, clip) in clips.iter().enumerate() {
            if k > 0 {
                parts.push(gap.shallow_clone());
            }
            parts.push(clip.to_device(Device::Cpu).clamp(-1.0, 1.0));
        }
        out.push(SideBySide {
            caption,
            columns,
            strip: Tensor::cat(&parts, 3),
        });
    }
    Ok(out)
}
