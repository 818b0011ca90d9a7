//! `plots/scaling.png`: Fréchet distance, shape accuracy and periodicity of APT's one-step
//! generator against the clips its adversarial stage saw (log scale), one line per `curve`
//! (the mean over seeds, every seed a dot), with the teacher and the distilled one- and
//! two-step generators as horizontal lines.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::results::{StudyResults, VariantResult};
use crate::eval::bootstrap::metric_value as read;
use crate::eval::AlignmentReport;
use crate::report::plots::{compact, register_font, COLOURS};

/// The panels: metric, title.
const PANELS: [(&str, &str); 3] = [
    ("frechet", "Fréchet distance (lower is better)"),
    ("shape_accuracy", "shape accuracy"),
    ("periodicity", "periodicity × real"),
];

/// A log axis' tick label: only 1, 2 and 5 times a power of ten are named (the others would
/// overlap).
fn log_tick(v: f64) -> String {
    let lead = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0].iter().any(|d| (lead - d).abs() < 1e-6) {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// The variants of each curve, ordered by clips.
pub fn curves(results: &StudyResults) -> BTreeMap<String, Vec<&VariantResult>> {
    let mut out: BTreeMap<String, Vec<&VariantResult>> = BTreeMap::new();
    for v in &results.variants {
        if let (Some(c), false) = (&v.curve, v.seeds.is_empty() || v.clips == 0) {
            out.entry(c.clone()).or_default().push(v);
        }
    }
    for vs in out.values_mut() {
        vs.sort_by_key(|v| v.clips);
    }
    out
}

/// Draws the plot into `path`; `Ok(false)` when no variant has a `curve`.
pub fn draw_scaling(path: &Path, results: &StudyResults) -> Result<bool, String> {
    let curves = curves(results);
    if curves.is_empty() {
        return Ok(false);
    }
    register_font()?;
    let root = BitMapBackend::new(path, (1440, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, PANELS.len()));
    for (k, ((metric, title), area)) in PANELS.iter().zip(areas).enumerate() {
        draw_panel(&area, results, &curves, metric, title, k == 0)
            .map_err(|e| format!("plotting {title}: {e}"))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(true)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    results: &StudyResults,
    curves: &BTreeMap<String, Vec<&VariantResult>>,
    metric: &str,
    title: &str,
    legend: bool,
) -> Result<(), String> {
    let scale = if metric.ends_with("accuracy") {
        100.0
    } else {
        1.0
    };
    let value = |r: &AlignmentReport| scale * read(r, metric);
    let lines: Vec<(String, f64)> = results
        .baselines
        .iter()
        .filter(|b| !b.name.starts_with("init "))
        .map(|b| (b.name.clone(), value(&b.report)))
        .collect();
    let dots: Vec<(f64, f64)> = curves
        .values()
        .flatten()
        .flat_map(|v| v.seeds.iter().map(|s| (v.clips as f64, value(&s.report))))
        .collect();
    let xs = dots.iter().map(|d| d.0);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ys = dots.iter().map(|d| d.1).chain(lines.iter().map(|l| l.1));
    let (lo, hi) = ys
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    // Headroom above the data for the legend (drawn in the first panel only).
    let pad = 0.08 * (hi - lo).max(1e-6);
    let top = hi + if legend { 6.0 * pad } else { pad };
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(((x_lo / 1.3)..(x_hi * 1.3)).log_scale(), (lo - pad)..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("clips seen by APT (updates × batch)")
        .x_label_formatter(&|v| log_tick(*v))
        .y_label_formatter(&|v| compact(*v))
        .light_line_style(WHITE)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    let greys = [
        RGBColor(0, 0, 0),
        RGBColor(120, 120, 120),
        RGBColor(190, 140, 60),
    ];
    for (k, (name, y)) in lines.iter().enumerate() {
        let colour = greys[k % greys.len()];
        chart
            .draw_series(LineSeries::new(
                vec![(x_lo / 1.3, *y), (x_hi * 1.3, *y)],
                colour.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    for (k, (curve, variants)) in curves.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mean: Vec<(f64, f64)> = variants
            .iter()
            .map(|v| {
                let n = v.seeds.len() as f64;
                let m = v.seeds.iter().map(|s| value(&s.report)).sum::<f64>() / n;
                (v.clips as f64, m)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(mean, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("one-step APT: {curve}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        let seeds = variants.iter().flat_map(|v| {
            v.seeds
                .iter()
                .map(move |s| Circle::new((v.clips as f64, value(&s.report)), 3, colour.filled()))
        });
        chart.draw_series(seeds).map_err(|e| err(&e))?;
    }
    if !legend {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_ticks_name_one_two_and_five() {
        let named: Vec<String> = [1000.0, 2000.0, 3000.0, 5000.0, 7000.0, 10000.0]
            .iter()
            .map(|v| super::log_tick(*v))
            .collect();
        assert_eq!(named, ["1000", "2000", "", "5000", "", "10000"]);
    }
}
