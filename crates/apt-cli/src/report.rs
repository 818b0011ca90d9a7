//! The run's evaluation and `report.md`: every generator on the same held-out prompts
//! (`metrics.json`), loss curves as PNG plots (`plots/`) and side-by-side GIFs (`samples/`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use apt_flow::run_eval::{evaluate_run, side_by_side, EvaluatedModel, RunModels};
use apt_flow::RunConfig;
use serde::{Deserialize, Serialize};

use crate::plots::{draw_panels, Panel, Series};

/// `metrics.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunMetrics {
    /// One row per generator.
    pub models: Vec<EvaluatedModel>,
    /// Seconds each stage's training took (from its `metrics.jsonl`).
    pub stage_seconds: Vec<(String, f64)>,
}

/// One row's cells, formatted once for both tables.
fn cells(r: &EvaluatedModel) -> [String; 11] {
    let m = &r.report;
    [
        r.name.clone(),
        r.network_evaluations.to_string(),
        format!("{:.1}%", 100.0 * m.colour_accuracy),
        format!("{:.1}%", 100.0 * m.direction_accuracy),
        format!("{:.1}%", 100.0 * m.shape_accuracy),
        format!("{:.2}", m.sharpness_vs_real),
        format!("{:.2}", m.frechet),
        format!("{:.2}", m.start_coverage),
        format!("{:.3}", m.size_variation),
        format!("{:.3}", m.colour_drift),
        format!("{:.1}", 1e3 * m.seconds_per_clip),
    ]
}

/// The table as fixed-width text (the console).
pub fn table(rows: &[EvaluatedModel]) -> String {
    const HEADER: [&str; 11] = [
        "model",
        "NFE",
        "colour",
        "direction",
        "shape",
        "sharp",
        "FD",
        "cover",
        "size±",
        "drift",
        "ms/clip",
    ];
    const WIDTH: [usize; 11] = [24, 4, 7, 9, 7, 7, 6, 6, 6, 7, 8];
    let line = |cells: &[String]| {
        let mut out = format!("{:<24}", cells[0]);
        for (c, w) in cells.iter().zip(WIDTH).skip(1) {
            out.push_str(&format!(" {c:>w$}"));
        }
        out + "\n"
    };
    let mut out = line(&HEADER.map(String::from));
    for r in rows {
        out.push_str(&line(&cells(r)));
    }
    out
}

fn markdown_table(rows: &[EvaluatedModel]) -> String {
    let mut out = String::from(
        "| model | NFE | colour | direction | shape | sharpness vs real | Fréchet ↓ | start coverage | size variation | colour drift | ms / clip |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    out
}

/// Reads `(step, field)` pairs from a stage's `metrics.jsonl`, keeping the last line per step
/// (a resumed run repeats the steps after its checkpoint).
fn curve(path: &Path, field: &str) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut by_step = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(step), Some(value)) = (v["step"].as_f64(), v[field].as_f64()) {
            by_step.insert(step as u64, value);
        }
    }
    by_step.into_iter().map(|(s, v)| (s as f64, v)).collect()
}

/// Training seconds of a stage: its last logged `seconds` (time since the stage's start; a
/// resumed stage counts from its resume).
fn stage_seconds(run: &RunConfig, stage: &str) -> Option<f64> {
    let c = curve(&run.out.join(stage).join("metrics.jsonl"), "seconds");
    c.last().map(|p| p.1)
}

fn series(label: &str, points: Vec<(f64, f64)>) -> Option<Series> {
    (!points.is_empty()).then(|| Series {
        label: label.into(),
        points,
    })
}

/// Writes `plots/losses.png` (flow losses) and `plots/apt.png` (G, D, aR1, D(real)/D(fake)).
fn write_plots(run: &RunConfig) -> Result<Vec<PathBuf>> {
    let dir = run.out.join("plots");
    std::fs::create_dir_all(&dir)?;
    let m = |stage: &str| run.out.join(stage).join("metrics.jsonl");
    let mut written = Vec::new();
    let flow: Vec<Panel> = [
        ("pretrain", "teacher: rectified-flow loss"),
        ("distill", "distillation: one-step loss"),
        ("consistency", "consistency distillation loss"),
    ]
    .into_iter()
    .filter_map(|(stage, title)| {
        series("loss", curve(&m(stage), "loss")).map(|s| Panel {
            title: title.into(),
            series: vec![s],
            log_y: true,
        })
    })
    .collect();
    if !flow.is_empty() {
        let path = dir.join("losses.png");
        draw_panels(&path, &flow, flow.len().min(3))?;
        written.push(path);
    }
    let apt = m("apt");
    if apt.is_file() {
        let panels = vec![
            Panel {
                title: "APT: generator loss (non-saturating)".into(),
                series: series("G", curve(&apt, "g_loss")).into_iter().collect(),
                log_y: false,
            },
            Panel {
                title: "APT: discriminator loss (BCE)".into(),
                series: series("D", curve(&apt, "d_loss")).into_iter().collect(),
                log_y: false,
            },
            Panel {
                title: "APT: approximated R1 (before λ)".into(),
                series: series("aR1", curve(&apt, "ar1")).into_iter().collect(),
                log_y: true,
            },
            Panel {
                title: "APT: D logits".into(),
                series: [
                    series("D(real)", curve(&apt, "d_real")),
                    series("D(fake)", curve(&apt, "d_fake")),
                ]
                .into_iter()
                .flatten()
                .collect(),
                log_y: false,
            },
        ];
        let path = dir.join("apt.png");
        draw_panels(&path, &panels, 2)?;
        written.push(path);
    }
    Ok(written)
}

fn relative(run: &RunConfig, path: &Path) -> String {
    path.strip_prefix(&run.out)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// What the demo must show, stated on the numbers (no tuning: the comparison is printed as is).
fn verdict(rows: &[EvaluatedModel]) -> String {
    let find = |name: &str| rows.iter().find(|r| r.name.starts_with(name));
    let (Some(teacher), Some(distilled), Some(apt)) = (
        find("teacher"),
        find("distilled one-step"),
        find("APT one-step"),
    ) else {
        return "The comparison needs the teacher, the distilled and the APT generators.\n".into();
    };
    let (d, a, t) = (&distilled.report, &apt.report, &teacher.report);
    let align = |r: &apt_flow::evaluate::AlignmentReport| {
        100.0 * (r.colour_accuracy + r.direction_accuracy + r.shape_accuracy) / 3.0
    };
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    format!(
        "- APT one-step vs distilled one-step, Fréchet distance: {:.2} → {:.2} (lower is better): {}\n\
         - … sharpness relative to real renders: {:.2} → {:.2}: {}\n\
         - Text alignment (mean of colour, direction, shape): teacher {:.1}, APT one-step {:.1} \
         (within 10 points: {})\n",
        d.frechet,
        a.frechet,
        yes(a.frechet < d.frechet),
        d.sharpness_vs_real,
        a.sharpness_vs_real,
        yes(a.sharpness_vs_real > d.sharpness_vs_real),
        align(t),
        align(a),
        yes(align(a) >= align(t) - 10.0),
    )
}

/// Evaluates the run, writes `metrics.json`, the plots, the GIFs and `report.md`, and returns
/// the report's path.
pub fn evaluate_and_write(run: &RunConfig) -> Result<PathBuf> {
    tracing::info!(prompts = run.report.prompts, "evaluating every generator");
    apt_flow::pretrain::apply_threads(run);
    let models = RunModels::load(run)?;
    // The attribute estimator reads moving shapes only; other data get curves and no table.
    let benchmark = matches!(run.data, apt_flow::data::DataConfig::Shapes { .. });
    let bar = crate::train_cmd::bar(0, "evaluate");
    let rows = if benchmark {
        evaluate_run(
            run,
            &models,
            run.report.prompts,
            &run.report.teacher,
            |done, total, name| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(name.to_string());
                tracing::info!(done, total, model = name, "evaluated");
            },
        )?
    } else {
        tracing::warn!(
            "the evaluation table needs the moving-shapes benchmark; writing curves only"
        );
        Vec::new()
    };
    bar.finish_and_clear();
    if !rows.is_empty() {
        print!("{}", table(&rows));
    }
    let stage_seconds: Vec<(String, f64)> = ["pretrain", "distill", "consistency", "apt"]
        .into_iter()
        .filter_map(|s| stage_seconds(run, s).map(|t| (s.to_string(), t)))
        .collect();
    let metrics = RunMetrics {
        models: rows,
        stage_seconds,
    };
    std::fs::write(
        run.out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?,
    )?;
    // A machine without the font still gets its report (the numbers), with a note.
    let (plots, plot_note) = match write_plots(run).context("drawing the loss curves") {
        Ok(p) => (p, None),
        Err(e) => {
            tracing::warn!("{e:#}; the report has no plots");
            (Vec::new(), Some(format!("{e:#}")))
        }
    };
    let samples = run.out.join("samples");
    std::fs::create_dir_all(&samples)?;
    let strips = if benchmark {
        side_by_side(run, &models, run.report.gifs, &run.report.teacher)?
    } else {
        Vec::new()
    };
    let mut gifs = Vec::new();
    for (k, s) in strips.iter().enumerate() {
        let path = samples.join(format!("prompt-{k}.gif"));
        apt_data::write_video(&path, &s.strip, 4.0)?;
        gifs.push((path, s));
    }

    let mut md = String::from("# Run report\n\n");
    md.push_str(&format!(
        "Run `{}`; {} held-out moving-shapes prompts (evaluation seed, not the training \
         seed), the same noise for every generator; the teacher samples with {} Euler steps \
         and CFG {}.\n\n",
        run.out.display(),
        run.report.prompts,
        run.report.teacher.steps,
        run.report.teacher.cfg_scale
    ));
    if benchmark {
        md.push_str(&markdown_table(&metrics.models));
    } else {
        md.push_str(
            "No evaluation table: the text-alignment, sharpness and Fréchet metrics read \
             moving-shapes clips with the attribute estimator, and this run trains on files. \
             Use `apt sample` on the stage directories to look at samples.\n",
        );
    }
    md.push_str(
        "\n*colour / direction / shape*: share of clips whose main object matches the caption \
         (attribute estimator; chance 1/8, 1/8, 1/3). *sharpness vs real*: edge sharpness over \
         that of the real renders of the same prompts. *Fréchet*: distance between Gaussians fitted \
         to 16 estimator features per clip (colour, background, size, size variation, start, \
         velocity, sharpness, outline moments, colour drift; standardised by the real set) of the \
         generated and the real clips. *start coverage*: share of the real clips' 4×4 start cells \
         the generated clips also start in (mode collapse lowers it). *size variation*: area std / \
         mean across frames; *colour drift*: RGB distance of each frame's object colour from its \
         mean. *ms / clip*: generation time per clip in batches of 16.\n\n",
    );
    md.push_str("## What APT does here\n\n");
    md.push_str(&verdict(&metrics.models));
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
        md.push_str(&format!("![{0}]({0})\n\n", relative(run, p)));
    }
    md.push_str("## Samples\n\n");
    for (path, s) in &gifs {
        md.push_str(&format!(
            "**{}** — {}\n\n![{}]({})\n\n",
            s.caption,
            s.columns.join(" | "),
            s.caption,
            relative(run, path)
        ));
    }
    let path = run.out.join("report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}
