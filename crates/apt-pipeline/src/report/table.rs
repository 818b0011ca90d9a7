//! The evaluation tables (console and markdown), with paired bootstrap intervals, and the
//! verdict on what APT does in the run, read off those intervals.

use crate::eval::{AlignmentReport, EvaluatedModel, Interval};

/// One row's cells, formatted once for both tables.
fn cells(r: &EvaluatedModel) -> [String; 12] {
    let m = &r.report;
    [
        r.name.clone(),
        r.network_evaluations.to_string(),
        format!("{:.1}%", 100.0 * m.colour_accuracy),
        format!("{:.1}%", 100.0 * m.direction_accuracy),
        format!("{:.1}%", 100.0 * m.shape_accuracy),
        format!("{:.2}", m.sharpness_vs_real),
        format!("{:.2}", m.frechet),
        format!("{:.2}", m.periodicity),
        format!("{:.2}", m.start_coverage),
        format!("{:.3}", m.size_variation),
        format!("{:.3}", m.colour_drift),
        format!("{:.1}", 1e3 * m.seconds_per_clip),
    ]
}

/// The table as fixed-width text (the console).
pub fn table(rows: &[EvaluatedModel]) -> String {
    const HEADER: [&str; 12] = [
        "model",
        "NFE",
        "colour",
        "direction",
        "shape",
        "sharp",
        "FD",
        "period",
        "cover",
        "size±",
        "drift",
        "ms/clip",
    ];
    const WIDTH: [usize; 12] = [24, 4, 7, 9, 7, 7, 6, 6, 6, 6, 7, 8];
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

fn interval(i: Option<&Interval>, scale: f64, digits: usize) -> String {
    match i {
        Some(i) => format!("[{:.d$}, {:.d$}]", scale * i.lo, scale * i.hi, d = digits),
        None => String::new(),
    }
}

/// The difference to the reference, with its interval, marked when the interval excludes 0.
fn difference(i: Option<&Interval>, scale: f64, digits: usize) -> String {
    match i {
        Some(i) => format!(
            "{:+.d$} [{:+.d$}, {:+.d$}]{}",
            scale * i.estimate,
            scale * i.lo,
            scale * i.hi,
            if i.excludes_zero() { " ✱" } else { "" },
            d = digits
        ),
        None => "–".into(),
    }
}

/// The tables in markdown (`report.md`): the metrics with their 95% intervals, then every
/// model's difference to the reference row.
pub fn markdown_table(rows: &[EvaluatedModel]) -> String {
    let mut out = String::from(
        "| model | NFE | prompts | colour | direction | shape | sharpness vs real | Fréchet ↓ | periodicity | start coverage | size variation | colour drift | ms / clip |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let c = cells(r);
        let i = r.intervals.as_ref().map(|i| &i.metrics);
        let at = |name: &str| i.and_then(|m| m.get(name));
        out.push_str(&format!(
            "| {} | {} | {} | {} {} | {} {} | {} {} | {} {} | {} {} | {} {} | {} | {} | {} | {} |\n",
            c[0],
            c[1],
            r.report.prompts,
            c[2],
            interval(at("colour_accuracy"), 100.0, 1),
            c[3],
            interval(at("direction_accuracy"), 100.0, 1),
            c[4],
            interval(at("shape_accuracy"), 100.0, 1),
            c[5],
            interval(at("sharpness_vs_real"), 1.0, 2),
            c[6],
            interval(at("frechet"), 1.0, 1),
            c[7],
            interval(at("periodicity"), 1.0, 2),
            c[8],
            c[9],
            c[10],
            c[11],
        ));
    }
    if rows.iter().any(|r| r.intervals.is_some()) {
        out.push_str(
            "\nDifference to the reference row (estimate [95% paired bootstrap interval]; ✱: the \
             interval excludes 0):\n\n| model | Δ Fréchet | Δ \\|sharpness vs real − 1\\| | Δ colour (points) | Δ shape (points) | Δ periodicity |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for r in rows {
            let d = r.intervals.as_ref().map(|i| &i.vs_reference);
            let at = |name: &str| d.and_then(|m| m.get(name));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.name,
                difference(at("frechet"), 1.0, 2),
                difference(at("sharpness_error"), 1.0, 3),
                difference(at("colour_accuracy"), 100.0, 1),
                difference(at("shape_accuracy"), 100.0, 1),
                difference(at("periodicity"), 1.0, 2),
            ));
        }
    }
    out
}

fn find<'a>(rows: &'a [EvaluatedModel], name: &str) -> Option<&'a EvaluatedModel> {
    rows.iter().find(|r| r.name == name)
}

fn resolved(d: Option<&Interval>, better_lower: bool) -> &'static str {
    match d {
        None => "no interval",
        Some(i) if !i.excludes_zero() => "inside the noise",
        Some(i) if (i.estimate < 0.0) == better_lower => "**better**, resolved",
        Some(_) => "**worse**, resolved",
    }
}

/// What the demo must show, stated on the numbers and their intervals (no tuning: the
/// comparison is printed as is).
pub fn verdict(rows: &[EvaluatedModel]) -> String {
    let (Some(teacher), Some(distilled), Some(apt)) = (
        rows.iter().find(|r| r.name.starts_with("teacher")),
        find(rows, "distilled one-step"),
        find(rows, "APT one-step"),
    ) else {
        return "The comparison needs the teacher, the distilled and the APT generators.\n".into();
    };
    let (d, a, t) = (&distilled.report, &apt.report, &teacher.report);
    let vs = |r: &EvaluatedModel, name: &str| {
        r.intervals
            .as_ref()
            .and_then(|i| i.vs_reference.get(name))
            .copied()
    };
    let align = |r: &AlignmentReport| {
        100.0 * (r.colour_accuracy + r.direction_accuracy + r.shape_accuracy) / 3.0
    };
    let fd = vs(apt, "frechet");
    let sharp = vs(apt, "sharpness_error");
    let show = |i: Option<Interval>, digits: usize| {
        i.map(|i| {
            format!(
                "{:+.d$} [{:+.d$}, {:+.d$}]",
                i.estimate,
                i.lo,
                i.hi,
                d = digits
            )
        })
        .unwrap_or_default()
    };
    let mut out = format!(
        "- APT one-step vs distilled one-step, Fréchet distance (lower is better): {:.2} → \
         {:.2}, Δ {}: {}\n\
         - … sharpness relative to real renders: {:.2} → {:.2}; its distance from 1 (blur \
         and over-sharpening alike), Δ {}: {}\n\
         - … periodicity relative to real renders: {:.2} → {:.2} (≤ 1.2: {})\n\
         - Colour accuracy: teacher {:.1}%, APT one-step {:.1}% (within 3 points: {}); text \
         alignment (mean of colour, direction, shape): teacher {:.1}, APT one-step {:.1}\n",
        d.frechet,
        a.frechet,
        show(fd, 2),
        resolved(fd.as_ref(), true),
        d.sharpness_vs_real,
        a.sharpness_vs_real,
        show(sharp, 3),
        resolved(sharp.as_ref(), true),
        d.periodicity,
        a.periodicity,
        if a.periodicity <= 1.2 {
            "yes"
        } else {
            "**no**"
        },
        100.0 * t.colour_accuracy,
        100.0 * a.colour_accuracy,
        if (a.colour_accuracy - t.colour_accuracy).abs() <= 0.03 {
            "yes"
        } else {
            "**no**"
        },
        align(t),
        align(a),
    );
    if let (Some(apt2), Some(dist2)) =
        (find(rows, "APT two-step"), find(rows, "distilled two-step"))
    {
        let fd2 = apt2
            .intervals
            .as_ref()
            .and_then(|i| i.vs_control.get("frechet"))
            .copied();
        out.push_str(&format!(
            "- Control: distilled two-step → APT two-step, Fréchet {:.2} → {:.2}, Δ {}: {}\n",
            dist2.report.frechet,
            apt2.report.frechet,
            show(fd2, 2),
            resolved(fd2.as_ref(), true),
        ));
    }
    out
}

/// The any-data table: each generator's teacher-feature Fréchet distance to the real clips
/// with its 95% interval and the paired difference to the reference row, the floor (real clips
/// under other noise) and what the numbers are.
pub fn teacher_fd_table(fd: &crate::eval::TeacherFdReport) -> String {
    let interval = |i: &Interval| format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.lo, i.hi);
    let mut md = format!(
        "Teacher-feature Fréchet distance (↓) of each generator's clips to {} real clips ({}), \
         one clip per real clip's caption, the same noise for every generator. Features: the \
         frozen teacher's visual tokens after block {} at t = {} (empty caption), mean-pooled, \
         projected to {} dimensions. Floor (the real clips against themselves under other \
         noise): {:.3}.\n\n| model | NFE | Fréchet (teacher features) | Δ vs {} |\n|---|---:|---:|---:|\n",
        fd.clips, fd.real, fd.tap, fd.time, fd.dim, fd.floor, fd.reference
    );
    if fd.fvd_i3d.is_some() {
        md = md.replace(
            " |\n|---|---:|---:|---:|\n",
            " | FVD ↓ |\n|---|---:|---:|---:|---:|\n",
        );
    }
    for row in &fd.rows {
        let fvd = match (&fd.fvd_i3d, row.fvd) {
            (Some(_), Some(v)) => format!(" {v:.2} |"),
            _ => String::new(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} |{fvd}\n",
            row.name,
            row.network_evaluations,
            interval(&row.frechet),
            row.vs_reference.as_ref().map_or("—".into(), interval)
        ));
    }
    if let Some(i3d) = &fd.fvd_i3d {
        md.push_str(&format!(
            "\nFVD: I3D features ({i3d}) of the decoded clips, resized to 224×224 and 16 \
             frames, against the real clips'.\n"
        ));
    }
    md.push_str(
        "\nThe features are read where the models work (a latent run's VAE latents: real clips \
         are encoded, generated ones are not decoded). It is no perceptual standard: the \
         teacher's features see what the teacher learnt, and distances compare generators \
         within this run only. Intervals: 95% paired bootstrap over the clips, basic \
         (reverse-percentile) intervals, which remove a resampled distance's upward bias.\n\n",
    );
    md
}

/// What the teacher-feature distance says of APT: its one-step row against the reference.
pub fn teacher_fd_verdict(fd: &crate::eval::TeacherFdReport) -> String {
    let Some(apt) = fd.rows.iter().find(|r| r.name == "APT one-step") else {
        return "No APT generator yet.\n".into();
    };
    match &apt.vs_reference {
        Some(d) => format!(
            "APT one-step against {}: Δ teacher-feature Fréchet {:.3} [{:.3}, {:.3}] — {}.\n",
            fd.reference,
            d.estimate,
            d.lo,
            d.hi,
            match (d.excludes_zero(), d.estimate < 0.0) {
                (true, true) => "closer to the real clips, resolved at 95%",
                (true, false) => "further from the real clips, resolved at 95%",
                _ => "inside the noise",
            }
        ),
        None => format!(
            "APT one-step: teacher-feature Fréchet {:.3} (no bootstrap draws).\n",
            apt.frechet.estimate
        ),
    }
}
