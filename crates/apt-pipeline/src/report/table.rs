//! The evaluation table (console and markdown) and the verdict on what APT does in the run.

use crate::eval::{AlignmentReport, EvaluatedModel};

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

/// The table in markdown (`report.md`).
pub fn markdown_table(rows: &[EvaluatedModel]) -> String {
    let mut out = String::from(
        "| model | NFE | colour | direction | shape | sharpness vs real | Fréchet ↓ | start coverage | size variation | colour drift | ms / clip |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    out
}

/// What the demo must show, stated on the numbers (no tuning: the comparison is printed as is).
pub fn verdict(rows: &[EvaluatedModel]) -> String {
    let find = |name: &str| rows.iter().find(|r| r.name.starts_with(name));
    let (Some(teacher), Some(distilled), Some(apt)) = (
        find("teacher"),
        find("distilled one-step"),
        find("APT one-step"),
    ) else {
        return "The comparison needs the teacher, the distilled and the APT generators.\n".into();
    };
    let (d, a, t) = (&distilled.report, &apt.report, &teacher.report);
    let align = |r: &AlignmentReport| {
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
