//! A study's files: `results.json`, `results.md` and `plots/` (every model's samples on the
//! same prompts and noise; the metrics against the clips seen, when variants name a `curve`; per variant, every seed's D logits on real and
//! generated clips, and G's loss, over training).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::results::{markdown, StudyResults};
use super::Study;
use crate::error::{io_error, Result};
use crate::report::curve;
use crate::report::plots::{draw_panels, Panel, Series};
use crate::run_dir::{write_atomically, write_json, RunDir, Stage};

/// Prompts in `plots/samples.png`.
const SAMPLE_PROMPTS: usize = 4;

/// Writes `results.json`, `results.md` and the plots under the study's `out`; returns the
/// markdown's path. A plot that cannot be drawn (no font) is skipped with a warning.
pub fn write_results(study: &Study, results: &StudyResults) -> Result<PathBuf> {
    let out = &study.config.out;
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    write_json(&out.join("results.json"), results)?;
    let mut plots = match write_plots(study, &out.join("plots")) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("study plots skipped: {e}");
            vec![]
        }
    };
    let samples = out.join("plots").join("samples.png");
    let rows = match super::samples::write_samples(
        study,
        &samples,
        SAMPLE_PROMPTS,
        &AtomicBool::new(false),
    ) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("study samples skipped: {e}");
            vec![]
        }
    };
    let scaling = out.join("plots").join("scaling.png");
    match super::plot::draw_scaling(&scaling, results) {
        Ok(true) => plots.insert(0, scaling),
        Ok(false) => {}
        Err(e) => tracing::warn!("study scaling plot skipped: {e}"),
    }
    let mut md = format!(
        "# Study `{}`\n\nBase run config `{}`, seeds {:?} (unless a variant gives its own).\n\n",
        out.display(),
        study.config.base.display(),
        study.config.seeds
    );
    md.push_str(&markdown(results));
    for p in plots {
        let rel = p.strip_prefix(out).unwrap_or(&p).display().to_string();
        md.push_str(&format!("\n![{rel}]({rel})\n"));
    }
    if !rows.is_empty() {
        md.push_str(&format!(
            "\n{SAMPLE_PROMPTS} held-out prompts, the same noise in every row, frames left to right \
             (rows top to bottom: {}):\n\n![plots/samples.png](plots/samples.png)\n",
            rows.join(", ")
        ));
    }
    let path = out.join("results.md");
    write_atomically(&path, md.as_bytes())?;
    Ok(path)
}

fn write_plots(study: &Study, dir: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let runs_of = |variant: &str| -> Vec<(u64, RunDir)> {
        study
            .runs
            .iter()
            .filter(|r| r.variant == variant)
            .map(|r| (r.seed, RunDir::new(&r.config.out)))
            .collect()
    };
    let panel = |title: String, fields: &[(&str, &str)], variant: &str| Panel {
        title,
        series: runs_of(variant)
            .into_iter()
            .flat_map(|(seed, run)| {
                fields
                    .iter()
                    .map(|(field, label)| Series {
                        label: format!("{label} s{seed}"),
                        points: curve(&run, Stage::Apt, field),
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.points.is_empty())
            .collect(),
        log_y: false,
    };
    let names: Vec<&str> = study
        .config
        .variants
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let logits: Vec<Panel> = names
        .iter()
        .map(|v| {
            let fields = [("d_real", "real"), ("d_fake", "fake")];
            panel(format!("{v}: D logits"), &fields, v)
        })
        .collect();
    let losses: Vec<Panel> = names
        .iter()
        .map(|v| panel(format!("{v}: G loss"), &[("g_loss", "G")], v))
        .collect();
    let mut written = Vec::new();
    for (file, panels) in [("d-logits.png", logits), ("g-loss.png", losses)] {
        let path = dir.join(file);
        draw_panels(&path, &panels, panels.len().min(3))?;
        written.push(path);
    }
    Ok(written)
}
