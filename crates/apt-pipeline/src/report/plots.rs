//! Loss curves as PNG files (`plotters`, bitmap backend): a grid of panels, each one or more
//! series against the step, drawn raw (light) and as a moving average (dark).

use std::path::Path;

use plotters::prelude::*;

/// Fonts tried for the labels (Debian's fonts-dejavu-core first).
const FONT_FILES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a sans-serif font with plotters once (it keeps a `'static` reference).
pub(crate) fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<std::result::Result<(), String>> =
        std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_FILES
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no font for the plots: install fonts-dejavu-core (looked for {})",
                        FONT_FILES.join(", ")
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "the DejaVu font could not be parsed".to_string())
        })
        .clone()
}

/// One curve.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(step, value)` points.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title and its curves.
pub struct Panel {
    /// Title.
    pub title: String,
    /// Curves.
    pub series: Vec<Series>,
    /// Log scale on y (for losses over orders of magnitude).
    pub log_y: bool,
}

/// Moving average over `window` points (centred, shrinking at the ends).
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(points.len());
            let mean = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0, mean)
        })
        .collect()
}

pub(crate) const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// A short tick label: 3 significant digits, scientific notation below 0.01.
pub(crate) fn compact(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `panels` in a grid of `columns` into the PNG `path`; the error says what failed (no
/// font, a panel, writing the file).
pub fn draw_panels(path: &Path, panels: &[Panel], columns: usize) -> Result<(), String> {
    register_font()?;
    let rows = panels.len().div_ceil(columns.max(1)).max(1);
    let size = (480 * columns as u32, 300 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(areas) {
        draw_panel(&area, panel).map_err(|e| format!("plotting {}: {e}", panel.title))?;
    }
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    p: &Panel,
) -> Result<(), String> {
    let all: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(_, y)| y.is_finite() && (!p.log_y || *y > 0.0))
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let (mut lo, mut hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    if hi <= lo {
        hi = lo + 1.0;
        if !p.log_y {
            lo -= 1.0;
        }
    }
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&p.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56);
    let window = (all.len() / p.series.len().max(1) / 40).max(1) | 1;
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_labels(6)
                .y_labels(6)
                .light_line_style(WHITE)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| compact(*v))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, s) in p.series.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let keep = |pt: &&(f64, f64)| pt.1.is_finite() && (!p.log_y || pt.1 > 0.0);
                let raw: Vec<(f64, f64)> = s.points.iter().filter(keep).copied().collect();
                chart
                    .draw_series(LineSeries::new(raw.clone(), colour.mix(0.25)))
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series(LineSeries::new(
                        moving_average(&raw, window),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    // A log axis over less than a decade would show a single tick label.
    if p.log_y && lo > 0.0 && hi / lo > 10.0 {
        body!(builder
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(|e| err(&e))?);
    } else {
        let pad = 0.05 * (hi - lo);
        body!(builder
            .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_keeps_constants_and_smooths_steps() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0)).collect();
        assert!(moving_average(&flat, 5)
            .iter()
            .all(|p| (p.1 - 2.0).abs() < 1e-12));
        let step = [(0.0, 0.0), (1.0, 0.0), (2.0, 3.0), (3.0, 3.0)];
        let m = moving_average(&step, 3);
        assert_eq!(m[1].1, 1.0);
        assert_eq!(m[2].1, 2.0);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(compact(0.9000000001), "0.9");
        assert_eq!(compact(0.125), "0.125");
        assert_eq!(compact(0.004), "4.0e-3");
        assert_eq!(compact(12.0), "12");
    }

    #[test]
    fn a_png_with_two_panels_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let series = |k: f64| Series {
            label: format!("k={k}"),
            points: (1..200).map(|i| (i as f64, k / i as f64)).collect(),
        };
        let panels = [
            Panel {
                title: "log".into(),
                series: vec![series(1.0), series(2.0)],
                log_y: true,
            },
            Panel {
                title: "linear".into(),
                series: vec![series(-1.0)],
                log_y: false,
            },
        ];
        draw_panels(&path, &panels, 2).unwrap();
        // A PNG of the grid's size (IHDR width and height), with more than a blank canvas.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!((be(16), be(20)), (960, 300));
        assert!(bytes.len() > 5_000, "{} bytes", bytes.len());
    }
}
