//! Evaluation of a whole run: every generator it has produced (the teacher with its multi-step
//! CFG sampler, the distilled students in one step, the APT generator in one and two steps) on
//! the same prompts and noise, and side-by-side clips for the report.

use apt_data::shapes::{ShapesConfig, Split};
use apt_mmdit::Mmdit;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::RunConfig;
use crate::data::DataConfig;
use crate::error::{config_error, Result};
use crate::evaluate::{default_batch, default_seed, shapes_alignment, AlignmentReport, EvalConfig};
use crate::onestep::OneStepGenerator;
use crate::rng::TensorRng;
use crate::sampler::{sample, Guidance, SamplerConfig};
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
    /// Loads whatever the run has exported.
    pub fn load(run: &RunConfig) -> Result<Self> {
        let device = run.device()?;
        let load = |stage: &str, file: &str| -> Result<Option<Mmdit>> {
            let dir = run.out.join(stage);
            if !dir.join(file).is_file() {
                return Ok(None);
            }
            let cfg = apt_mmdit::MmditConfig::from_toml_file(dir.join("model.toml"))?;
            let vs = tch::nn::VarStore::new(device);
            let model = crate::rng::with_global_seed(0, || Mmdit::new(vs.root(), &cfg))?;
            apt_mmdit::load_safetensors(&vs, dir.join(file))?;
            // The model holds its tensors; the store can go.
            Ok(Some(model))
        };
        Ok(Self {
            teacher: load("pretrain", "teacher.safetensors")?,
            distilled: load("distill", "student.safetensors")?,
            consistency: load("consistency", "student.safetensors")?,
            apt: load("apt", "generator.safetensors")?,
        })
    }
}

fn shapes_of(run: &RunConfig) -> Result<&ShapesConfig> {
    match &run.data {
        DataConfig::Shapes { shapes, .. } => Ok(shapes),
        DataConfig::Files { .. } => Err(config_error(
            "data",
            "evaluation needs the moving-shapes benchmark",
        )),
    }
}

fn teacher_sample(
    model: &Mmdit,
    z: &Tensor,
    cond: &crate::flow::Conditioning,
    null: &crate::flow::Conditioning,
    sampler: &SamplerConfig,
) -> Result<Tensor> {
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
/// `progress(done, total, name)` is called after each generator.
pub fn evaluate_run(
    run: &RunConfig,
    models: &RunModels,
    prompts: usize,
    teacher: &SamplerConfig,
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
        seed: default_seed(),
        sampler: *teacher,
        batch: default_batch(),
    };
    let mut rows = Vec::new();
    if let Some(model) = &models.teacher {
        let report = shapes_alignment(shapes, &text, &eval, device, |z, cond| {
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
        let report = shapes_alignment(shapes, &text, &eval, device, |z, c| g.generate(z, c))?;
        rows.push(EvaluatedModel {
            name: format!("{label} one-step"),
            network_evaluations: 1,
            report,
        });
        progress(rows.len(), total, &rows[rows.len() - 1].name);
        if label == "APT" {
            let report = shapes_alignment(shapes, &text, &eval, device, |z, c| {
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

/// Side-by-side strips for the first `prompts` evaluation prompts.
pub fn side_by_side(
    run: &RunConfig,
    models: &RunModels,
    prompts: usize,
    teacher: &SamplerConfig,
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
    let mut noise = TensorRng::new(default_seed(), 1);
    let mut out = Vec::new();
    for i in 0..prompts {
        let drawn = shapes.draw(default_seed(), i as u64, Split::All)?;
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
