//! The moving-shapes benchmark and its attribute estimator.

use apt_data::estimator::{estimate, OutlineMoments};
use apt_data::shapes::{Colour, Direction, Shape, ShapesConfig, Split};
use tch::{Kind, Tensor};

fn config() -> ShapesConfig {
    ShapesConfig {
        speeds: vec![1.0, 2.0],
        ..ShapesConfig::new(8, 32, 32)
    }
}

#[test]
fn samples_are_deterministic_and_captioned() {
    let cfg = config();
    let a = cfg.sample(3, 17, Split::All).unwrap();
    let b = cfg.sample(3, 17, Split::All).unwrap();
    assert!(a.video.equal(&b.video));
    assert_eq!(a.caption, b.caption);
    assert_eq!(a.video.size(), vec![3, 8, 32, 32]);
    assert!(a.video.min().double_value(&[]) >= -1.0 && a.video.max().double_value(&[]) <= 1.0);
    let s = &a.shapes[0];
    let speed = if s.speed == 1.0 {
        " slowly"
    } else {
        " quickly"
    };
    assert_eq!(
        a.caption,
        format!(
            "a {} {} moves {}{speed}",
            s.colour.name(),
            s.shape.name(),
            s.direction.name()
        )
    );
    assert_ne!(
        cfg.sample(3, 18, Split::All).unwrap().caption,
        "",
        "other samples render too"
    );
    // Any size works.
    let big = ShapesConfig::new(3, 48, 80)
        .sample(0, 0, Split::All)
        .unwrap();
    assert_eq!(big.video.size(), vec![3, 3, 48, 80]);
}

#[test]
fn shapes_stay_inside_the_frame() {
    let cfg = ShapesConfig {
        max_shapes: 3,
        ..config()
    };
    for i in 0..200 {
        for s in cfg.draw(1, i, Split::All).unwrap() {
            for &(x, y) in &s.centres {
                assert!(
                    x - s.size >= 0.0
                        && x + s.size <= 32.0
                        && y - s.size >= 0.0
                        && y + s.size <= 32.0,
                    "{s:?}"
                );
            }
        }
    }
}

#[test]
fn held_out_combinations_never_appear_in_training() {
    let cfg = ShapesConfig {
        held_out: vec![
            (Colour::Yellow, Shape::Triangle),
            (Colour::Red, Shape::Square),
        ],
        ..config()
    };
    for i in 0..500 {
        let train = cfg.draw(5, i, Split::Train).unwrap();
        assert!(train
            .iter()
            .all(|s| !cfg.held_out.contains(&(s.colour, s.shape))));
        let held = cfg.draw(5, i, Split::HeldOut).unwrap();
        assert!(cfg.held_out.contains(&(held[0].colour, held[0].shape)));
    }
    assert!(ShapesConfig::new(8, 32, 32)
        .draw(0, 0, Split::HeldOut)
        .is_err());
}

#[test]
fn bad_configs_name_the_option() {
    let too_fast = ShapesConfig {
        speeds: vec![5.0],
        ..ShapesConfig::new(16, 32, 32)
    };
    assert!(too_fast
        .validate()
        .unwrap_err()
        .to_string()
        .contains("speeds"));
    let no_shapes = ShapesConfig {
        max_shapes: 0,
        ..config()
    };
    assert!(no_shapes
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_shapes"));
}

#[test]
fn the_estimator_reads_clean_renders_back() {
    let cfg = config();
    let n = 300;
    let (mut colour, mut direction, mut shape, mut count) = (0, 0, 0, 0);
    let mut centre_error: f64 = 0.0;
    for i in 0..n {
        let sample = cfg.sample(11, i, Split::All).unwrap();
        let est = estimate(&sample.video);
        let truth = &sample.shapes[0];
        count += usize::from(est.shapes.len() == 1);
        let Some(found) = est.shapes.first() else {
            continue;
        };
        colour += usize::from(found.colour == truth.colour);
        direction += usize::from(found.direction == Some(truth.direction));
        shape += usize::from(found.shape == truth.shape);
        assert!(
            (found.speed - truth.speed).abs() < 0.2,
            "speed {} vs {}",
            found.speed,
            truth.speed
        );
        for (e, t) in found.centres.iter().zip(&truth.centres) {
            let (ex, ey) = e.expect("seen in every frame");
            centre_error = centre_error.max(((ex - t.0).powi(2) + (ey - t.1).powi(2)).sqrt());
        }
    }
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    eprintln!("clean renders: colour {:.1}% direction {:.1}% shape {:.1}% one-object {:.1}% max centre error {centre_error:.2} px", pct(colour), pct(direction), pct(shape), pct(count));
    assert!(
        pct(colour) >= 99.0 && pct(direction) >= 99.0,
        "colour {colour}/{n}, direction {direction}/{n}"
    );
    assert!(
        pct(shape) >= 99.0 && pct(count) >= 99.0,
        "shape {shape}/{n}, single object {count}/{n}"
    );
    assert!(centre_error < 0.5, "centre error {centre_error}");
}

#[test]
fn the_estimator_separates_several_shapes_and_survives_noise() {
    let cfg = ShapesConfig {
        max_shapes: 2,
        size: [0.1, 0.14],
        ..config()
    };
    let mut found_all = 0;
    for i in 0..100 {
        let sample = cfg.sample(2, i, Split::All).unwrap();
        tch::manual_seed(i as i64);
        let noisy = (&sample.video + sample.video.randn_like() * 0.1).clamp(-1.0, 1.0);
        let est = estimate(&noisy);
        let mut truth: Vec<Colour> = sample.shapes.iter().map(|s| s.colour).collect();
        let mut seen: Vec<Colour> = est.shapes.iter().map(|s| s.colour).collect();
        truth.sort_by_key(|c| *c as u8);
        seen.sort_by_key(|c| *c as u8);
        found_all += usize::from(truth == seen);
    }
    eprintln!("{found_all}/100 noisy two-shape clips fully recognised");
    assert!(
        found_all >= 97,
        "{found_all}/100 noisy multi-shape clips fully recognised"
    );
}

#[test]
fn blurred_edges_are_less_sharp() {
    let cfg = ShapesConfig {
        size: [0.18, 0.18],
        ..config()
    };
    let sample = cfg.sample(0, 4, Split::All).unwrap();
    // 3×3 box blur per frame.
    let frames = sample.video.transpose(0, 1); // [T, 3, H, W]
    let kernel = Tensor::ones([3, 1, 3, 3], (Kind::Float, tch::Device::Cpu)) / 9.0;
    let blurred = frames
        .conv2d(&kernel, None::<Tensor>, [1, 1], [1, 1], [1, 1], 3)
        .transpose(0, 1);
    let crisp = estimate(&sample.video).shapes[0].sharpness;
    let soft = estimate(&blurred).shapes[0].sharpness;
    assert!(
        crisp > 0.7 && soft < 0.7 * crisp,
        "crisp {crisp}, blurred {soft}"
    );
}

#[test]
fn moments_of_ideal_outlines_and_motions_to_directions() {
    // Dense point samples of ideal unit shapes.
    let grid = |inside: &dyn Fn(f64, f64) -> bool| {
        let n = 400;
        let mut pts = Vec::new();
        for i in 0..n {
            for j in 0..n {
                let (x, y) = (
                    -1.0 + 2.0 * (i as f64 + 0.5) / n as f64,
                    -1.0 + 2.0 * (j as f64 + 0.5) / n as f64,
                );
                if inside(x, y) {
                    pts.push((x, y, 1.0));
                }
            }
        }
        OutlineMoments::of(&pts).unwrap()
    };
    let square = grid(&|_, _| true);
    let disc = grid(&|x, y| x * x + y * y <= 1.0);
    let c = 3f64.sqrt() / 2.0;
    let triangle = grid(&|x, y| y <= 0.5 && x * c - y * 0.5 <= 0.5 && -x * c - y * 0.5 <= 0.5);
    assert!(
        (square.kurtosis_gap - 0.6).abs() < 0.01 && square.skew_y.abs() < 0.01,
        "{square:?}"
    );
    assert!(
        disc.kurtosis_gap.abs() < 0.01 && disc.skew_y.abs() < 0.01,
        "{disc:?}"
    );
    assert!(
        triangle.kurtosis_gap.abs() < 0.01 && (triangle.skew_y + 0.566).abs() < 0.01,
        "{triangle:?}"
    );
    assert_eq!(
        (square.shape(), disc.shape(), triangle.shape()),
        (Shape::Square, Shape::Circle, Shape::Triangle)
    );
    for d in Direction::ALL {
        let (x, y) = d.unit();
        assert_eq!(Direction::nearest(3.0 * x, 3.0 * y), d);
    }
}

#[test]
fn an_exported_folder_decodes_back_to_its_attributes() {
    use apt_data::shapes::{write_folder, ExportedClip};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let files = write_folder(&cfg, 9, Split::All, 12, 8.0, dir.path(), |_| {}).unwrap();
    assert_eq!(files.len(), 12);
    let lines: Vec<ExportedClip> = std::fs::read_to_string(dir.path().join("attributes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (file, line) in files.iter().zip(&lines) {
        let caption = std::fs::read_to_string(file.with_extension("txt")).unwrap();
        assert_eq!(caption.trim(), line.caption);
        // Through H.264 and back, the estimator still reads the attributes.
        let f = apt_data::decode(file, apt_data::FrameSize::Native).unwrap();
        let video = apt_data::clip::frames_to_tensor(
            &f.data,
            f.len(),
            f.height,
            f.width,
            (0, 0, f.height, f.width),
        );
        let est = estimate(&video);
        let (found, truth) = (&est.shapes[0], &line.shapes[0]);
        assert_eq!(
            (found.colour, found.shape, found.direction),
            (truth.colour, truth.shape, Some(truth.direction)),
            "{}",
            line.caption
        );
    }
}
