//! Evaluation of a whole run: every generator it has produced — the teacher with its
//! multi-step CFG sampler, the distilled students in one step (and the deterministic one in a
//! zero-shot two steps, the control for APT two-step), the APT generator (EMA, and raw G) in
//! one and two steps — on the same prompts and noise, with paired bootstrap intervals, and
//! side-by-side clips for the report.

use std::sync::atomic::{AtomicBool, Ordering};

use apt_data::shapes::{ShapesConfig, Split};
use apt_flow::{sample, Conditioning, Guidance, OneStepGenerator, SamplerConfig, TensorRng};
use apt_mmdit::Model;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::alignment::{score_clips, summarise, AlignmentReport, FeatureScale, ScoredClips};
use super::bootstrap::{paired_bootstrap, ModelIntervals};
use crate::config::{default_eval_batch, EvalConfig, RunConfig};
use crate::error::{config_error, PipelineError, Result};
use crate::latent::Space;
use crate::run_dir::{RunDir, Stage};
use crate::text::TextConditioner;

/// One row of a run's evaluation table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluatedModel {
    /// What was evaluated (`teacher (25-step CFG 2)`, `distilled one-step`, …).
    pub name: String,
    /// Network evaluations per clip.
    pub network_evaluations: usize,
    /// Alignment, sharpness, consistency, Fréchet distance, periodicity and speed, on every
    /// prompt the model was evaluated on.
    pub report: AlignmentReport,
    /// Paired bootstrap intervals of the metrics and of the differences to the reference row
    /// (`None` without bootstrap draws).
    #[serde(default)]
    pub intervals: Option<ModelIntervals>,
}

/// The generators of a run, loaded from its stage directories (absent stages are `None`).
pub struct RunModels {
    /// `pretrain/teacher.safetensors`.
    pub teacher: Option<Model>,
    /// `distill/student.safetensors`.
    pub distilled: Option<Model>,
    /// `consistency/student.safetensors`.
    pub consistency: Option<Model>,
    /// `apt/generator.safetensors` (the EMA generator).
    pub apt: Option<Model>,
    /// `apt/generator-raw.safetensors` (G's own weights, without the EMA).
    pub apt_raw: Option<Model>,
    /// Where they generate: pixels, or the latents of the run's VAE (decoded for scoring).
    pub space: Space,
}

impl RunModels {
    /// Loads whatever the run has exported, each checked against its integrity record.
    pub fn load(run: &RunConfig, dir: &RunDir) -> Result<Self> {
        let device = run.device()?;
        let load = |stage| -> Result<Option<Model>> {
            // The model holds its tensors; the store can go.
            Ok(dir.load_model(stage, device)?.map(|m| m.model))
        };
        let raw = dir.raw_export_path(Stage::Apt);
        Ok(Self {
            teacher: load(Stage::Pretrain)?,
            distilled: load(Stage::Distill)?,
            consistency: load(Stage::Consistency)?,
            apt: load(Stage::Apt)?,
            apt_raw: match raw.is_file() {
                true => Some(crate::run_dir::load_exported(&raw, device)?.model),
                false => None,
            },
            space: Space::open(run, dir)?,
        })
    }

    /// True when the run has exported no model at all (nothing to evaluate).
    pub fn is_empty(&self) -> bool {
        self.teacher.is_none()
            && self.distilled.is_none()
            && self.consistency.is_none()
            && self.apt.is_none()
            && self.apt_raw.is_none()
    }
}

fn shapes_of(run: &RunConfig) -> Result<&ShapesConfig> {
    run.data
        .shapes()
        .ok_or_else(|| config_error("data", "evaluation needs the moving-shapes benchmark"))
}

fn teacher_sample(
    model: &Model,
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

/// How a row's clips are made.
pub(crate) enum Generation<'a> {
    /// The teacher's multi-step CFG sampler.
    Teacher(&'a Model),
    /// A one-step generator in `steps` zero-shot steps.
    Steps(&'a Model, usize),
}

impl Generation<'_> {
    /// One batch of clips from noise `z` under `cond` (`null` and `sampler`: the teacher's
    /// unconditional embedding and CFG sampler).
    pub(crate) fn generate(
        &self,
        z: &Tensor,
        cond: &Conditioning,
        null: &Conditioning,
        sampler: &SamplerConfig,
    ) -> apt_flow::Result<Tensor> {
        match self {
            Generation::Teacher(m) => teacher_sample(m, z, cond, null, sampler),
            Generation::Steps(m, 1) => OneStepGenerator::new(m).generate(z, cond),
            Generation::Steps(m, n) => OneStepGenerator::new(m).generate_steps(z, cond, *n),
        }
    }
}

/// The rows a run's models give, in table order.
pub(crate) fn rows<'a>(
    models: &'a RunModels,
    teacher: &SamplerConfig,
) -> Vec<(String, usize, Generation<'a>)> {
    let mut rows = Vec::new();
    if let Some(m) = &models.teacher {
        rows.push((
            format!("teacher ({}-step CFG {})", teacher.steps, teacher.cfg_scale),
            teacher.network_evaluations(),
            Generation::Teacher(m),
        ));
    }
    let mut add = |m: &'a Option<Model>, name: &str, steps: usize| {
        if let Some(m) = m {
            rows.push((name.to_string(), steps, Generation::Steps(m, steps)));
        }
    };
    add(&models.distilled, "distilled one-step", 1);
    add(&models.distilled, "distilled two-step", 2);
    add(&models.consistency, "consistency one-step", 1);
    add(&models.apt, "APT one-step", 1);
    add(&models.apt_raw, "APT one-step (raw G)", 1);
    add(&models.apt, "APT two-step", 2);
    rows
}

/// Evaluates every generator the run has produced on the report's held-out prompts (its seed,
/// not the training seed; the teacher on `teacher_prompts` of them when set) with the same
/// noise, then bootstraps intervals with the first distilled one-step row as the reference.
/// Stages that have not run are skipped. `progress(done, total, name)` is called after each
/// generator; raising `stop` ends the evaluation with [`PipelineError::Interrupted`].
pub fn evaluate_run(
    run: &RunConfig,
    models: &RunModels,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<EvaluatedModel>> {
    let report = &run.report;
    let shapes = shapes_of(run)?;
    let device = run.device()?;
    let [ph, pw] = super::alignment::patch_grid(&run.model()?);
    let text = TextConditioner::for_run(run, device)?;
    let null = text.null()?;
    let eval = |prompts| EvalConfig {
        prompts,
        seed: report.seed,
        sampler: report.teacher,
        batch: default_eval_batch(),
    };
    let planned = rows(models, &report.teacher);
    let mut scored: Vec<(String, usize, ScoredClips)> = Vec::new();
    for (name, nfe, how) in planned.iter() {
        let prompts = match how {
            Generation::Teacher(_) => report.teacher_prompts.unwrap_or(report.prompts),
            Generation::Steps(..) => report.prompts,
        };
        let clips = score_clips(
            shapes,
            &text,
            &eval(prompts),
            &models.space,
            [ph, pw],
            device,
            stop,
            |z, c| how.generate(z, c, &null, &report.teacher),
        )?;
        scored.push((name.clone(), *nfe, clips));
        progress(scored.len(), planned.len(), name);
    }
    let reference = scored
        .iter()
        .position(|(n, _, _)| n == "distilled one-step")
        .or_else(|| scored.iter().position(|(n, _, _)| n.ends_with("one-step")))
        .unwrap_or(0);
    let sets: Vec<&ScoredClips> = scored.iter().map(|(_, _, s)| s).collect();
    let position = |name: &str| scored.iter().position(|(n, _, _)| n == name);
    // APT two-step's control is the distilled student in the same two steps.
    let controls: Vec<(usize, usize, String)> =
        match (position("APT two-step"), position("distilled two-step")) {
            (Some(a), Some(b)) => vec![(a, b, "distilled two-step".into())],
            _ => vec![],
        };
    let intervals = match (report.bootstrap, sets.is_empty()) {
        (0, _) | (_, true) => vec![None; sets.len()],
        (draws, false) => paired_bootstrap(&sets, reference, &controls, draws, report.seed)
            .into_iter()
            .map(Some)
            .collect(),
    };
    let scale = FeatureScale::common(&sets);
    let reports: Vec<AlignmentReport> = scored
        .iter()
        .map(|(_, _, clips)| {
            let all: Vec<usize> = (0..clips.clips.len()).collect();
            let own = FeatureScale::of(&clips.real);
            summarise(clips, &all, scale.as_ref().unwrap_or(&own))
        })
        .collect();
    Ok(scored
        .into_iter()
        .zip(intervals)
        .zip(reports)
        .map(|(((name, nfe, _), intervals), report)| EvaluatedModel {
            name,
            network_evaluations: nfe,
            report,
            intervals,
        })
        .collect())
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
    let text = TextConditioner::for_run(run, device)?;
    let null = text.null()?;
    let (t, h, w) = (
        shapes.frames as i64,
        shapes.height as i64,
        shapes.width as i64,
    );
    let seed = run.report.seed;
    let mut noise = TensorRng::new(seed, 1);
    let mut out = Vec::new();
    for i in 0..prompts {
        if stop.load(Ordering::SeqCst) {
            return Err(PipelineError::Interrupted);
        }
        let drawn = shapes.draw(seed, i as u64, Split::All)?;
        let caption = shapes.caption(&drawn);
        let cond = text.batch(std::slice::from_ref(&caption), &[])?;
        let [c, zt, zh, zw] = models.space.model_shape([3, t, h, w]);
        let z = noise.normal(&[1, c, zt, zh, zw], device);
        let decode = |x: Tensor| -> Result<Tensor> { Ok(models.space.to_pixels(&x)?.get(0)) };
        let mut columns = vec!["real".to_string()];
        let mut clips = vec![shapes.render(&drawn).to_kind(tch::Kind::Float)];
        if let Some(m) = &models.teacher {
            columns.push("teacher".into());
            clips.push(decode(teacher_sample(m, &z, &cond, &null, teacher)?)?);
        }
        for (model, label) in [
            (&models.distilled, "distilled"),
            (&models.consistency, "consistency"),
            (&models.apt, "APT"),
        ] {
            if let Some(m) = model {
                columns.push(label.into());
                clips.push(decode(OneStepGenerator::new(m).generate(&z, &cond)?)?);
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
