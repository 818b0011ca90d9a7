//! Set-level metrics on the moving-shapes benchmark, built from the attribute estimator: a
//! feature vector per clip, the Fréchet distance between a generated and a real set, coverage
//! of start positions (mode collapse shows as low coverage) and temporal consistency.
//!
//! **Feature vector** (16 numbers per clip, from the main object: the one with the caption's
//! colour, else the largest): object RGB (3), background RGB (3), mean area / frame area,
//! area variation over frames (std / mean), start centre x / W and y / H, velocity x and y
//! (pixels per frame), edge sharpness, the outline's two moments (`skew_y`, `kurtosis_gap`),
//! and colour drift over frames (mean distance of each frame's object colour from its mean). A clip with no object has the background as its colour and
//! zeros elsewhere. Before the Fréchet distance every feature is standardised with the real
//! set's mean and standard deviation (floored at 1e-3), so no unit dominates.

use apt_data::estimator::{Estimate, EstimatedShape};
use apt_data::shapes::Colour;
use tch::{Device, Kind, Tensor};

/// Features per clip.
pub const FEATURES: usize = 16;

/// Smallest standard deviation each feature is scaled by, in its own unit: RGB 0.05 (object
/// and background), area fraction 0.01, size variation 0.05, start position 0.05 (of the
/// frame), velocity 0.25 px/frame, sharpness 0.1, outline moments 0.1, colour drift 0.02.
pub const FEATURE_SCALE_FLOOR: [f64; FEATURES] = [
    0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.01, 0.05, 0.05, 0.05, 0.25, 0.25, 0.1, 0.1, 0.1, 0.02,
];

/// Area variation over the frames where the object is seen: std / mean (0 for a constant size).
pub fn size_variation(shape: &EstimatedShape) -> f64 {
    let seen: Vec<f64> = shape
        .areas
        .iter()
        .zip(&shape.centres)
        .filter(|(_, c)| c.is_some())
        .map(|(a, _)| *a)
        .collect();
    let (mean, std) = mean_std(&seen);
    if mean > 0.0 {
        std / mean
    } else {
        0.0
    }
}

/// Mean distance (RGB in [0, 1]) of each frame's object colour from its overall mean colour.
pub fn colour_drift(shape: &EstimatedShape) -> f64 {
    let d: Vec<f64> = shape
        .frame_rgb
        .iter()
        .flatten()
        .map(|rgb| {
            rgb.iter()
                .zip(shape.mean_rgb)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    mean_std(&d).0
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The main object of an estimate: the one with colour `want`, else the largest.
pub fn main_object(estimate: &Estimate, want: Option<Colour>) -> Option<&EstimatedShape> {
    estimate
        .shapes
        .iter()
        .find(|s| Some(s.colour) == want)
        .or(estimate.shapes.first())
}

/// The start centre `(x / W, y / H)` of an object: its first frame where it is seen.
pub fn start_position(shape: &EstimatedShape, height: usize, width: usize) -> Option<(f64, f64)> {
    shape
        .centres
        .iter()
        .flatten()
        .next()
        .map(|&(x, y)| (x / width as f64, y / height as f64))
}

/// The feature vector of one clip (see the module docs).
pub fn clip_features(
    estimate: &Estimate,
    want: Option<Colour>,
    height: usize,
    width: usize,
) -> [f64; FEATURES] {
    let bg = estimate.background;
    let Some(s) = main_object(estimate, want) else {
        return [
            bg[0], bg[1], bg[2], bg[0], bg[1], bg[2], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0,
        ];
    };
    let frame_area = (height * width) as f64;
    let mean_area = s.areas.iter().sum::<f64>() / s.areas.len().max(1) as f64;
    let (x0, y0) = start_position(s, height, width).unwrap_or((0.0, 0.0));
    let (vx, vy) = apt_data::estimator::fit_velocity(&s.centres);
    [
        s.mean_rgb[0],
        s.mean_rgb[1],
        s.mean_rgb[2],
        bg[0],
        bg[1],
        bg[2],
        mean_area / frame_area,
        size_variation(s),
        x0,
        y0,
        vx,
        vy,
        s.sharpness,
        s.moments.skew_y,
        s.moments.kurtosis_gap,
        colour_drift(s),
    ]
    .map(|v| if v.is_finite() { v } else { 0.0 })
}

/// The mean `[1, F]` and standard deviation `[1, F]` of `reference` `[M, F]` per feature, the
/// std floored at `floor` `[F]`.
pub fn feature_scale(reference: &Tensor, floor: &[f64]) -> (Tensor, Tensor) {
    let reference = reference.to_kind(Kind::Double);
    let mean = reference.mean_dim(0, true, Kind::Double);
    let floor = Tensor::from_slice(floor).view([1, -1]);
    let std = reference.std_correction(0, 0, true).maximum(&floor);
    (mean, std)
}

/// Energy of the part of a clip `[C, T, H, W]` that repeats with the patch period `[ph, pw]`:
/// the clip averaged over every patch position — one `[C, T, ph, pw]` pattern, what is added
/// equally to every patch — less its own mean, squared and averaged. A patch-grid artefact
/// raises it; a clip without one has only what its content happens to leave (H and W are
/// cropped to multiples of the patch).
pub fn patch_periodic_energy(clip: &Tensor, patch: [usize; 2]) -> f64 {
    let [c, t, h, w] = <[i64; 4]>::try_from(clip.size()).expect("[C, T, H, W]");
    let (ph, pw) = (patch[0].max(1) as i64, patch[1].max(1) as i64);
    let (gh, gw) = (h / ph, w / pw);
    if gh == 0 || gw == 0 {
        return 0.0;
    }
    let x = clip
        .narrow(2, 0, gh * ph)
        .narrow(3, 0, gw * pw)
        .to_kind(Kind::Double)
        .reshape([c, t, gh, ph, gw, pw]);
    let pattern = x.mean_dim([2i64, 4].as_slice(), false, Kind::Double);
    let centred = &pattern - pattern.mean_dim([2i64, 3].as_slice(), true, Kind::Double);
    centred.square().mean(Kind::Double).double_value(&[])
}

/// Fréchet distance between Gaussians fitted to two sets of features `[N, F]`, `[M, F]`:
/// `‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})` (the FID formula; the matrix
/// square roots come from symmetric eigendecompositions, negative round-off clamped to 0).
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double).to_device(Device::Cpu);
    let b = b.to_kind(Kind::Double).to_device(Device::Cpu);
    let (mu_a, mu_b) = (
        a.mean_dim(0, false, Kind::Double),
        b.mean_dim(0, false, Kind::Double),
    );
    let cov = |x: &Tensor, mu: &Tensor| {
        let c = x - mu;
        let n = (x.size()[0] - 1).max(1) as f64;
        c.transpose(0, 1).matmul(&c) / n
    };
    let (sa, sb) = (cov(&a, &mu_a), cov(&b, &mu_b));
    let sqrt_psd = |m: &Tensor| {
        let sym = (m + m.transpose(0, 1)) / 2.0;
        let (vals, vecs) = sym.linalg_eigh("L");
        let root = vals.clamp_min(0.0).sqrt();
        (&vecs * root.unsqueeze(0)).matmul(&vecs.transpose(0, 1))
    };
    let root_a = sqrt_psd(&sa);
    let middle = root_a.matmul(&sb).matmul(&root_a);
    let middle = (&middle + middle.transpose(0, 1)) / 2.0;
    let (vals, _) = middle.linalg_eigh("L");
    let trace_root = vals
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let diff = (&mu_a - &mu_b).square().sum(Kind::Double).double_value(&[]);
    let traces = sa.trace().double_value(&[]) + sb.trace().double_value(&[]);
    (diff + traces - 2.0 * trace_root).max(0.0)
}

/// Share of the `grid × grid` cells holding a real start position that also hold a generated
/// one (1 = every region the real set starts in is covered; a collapsed generator scores low).
pub fn start_coverage(real: &[(f64, f64)], generated: &[(f64, f64)], grid: usize) -> f64 {
    let cell = |&(x, y): &(f64, f64)| {
        let c = |v: f64| ((v.clamp(0.0, 0.999_999)) * grid as f64) as usize;
        c(y) * grid + c(x)
    };
    let real_cells: std::collections::BTreeSet<usize> = real.iter().map(cell).collect();
    let generated_cells: std::collections::BTreeSet<usize> = generated.iter().map(cell).collect();
    if real_cells.is_empty() {
        return 0.0;
    }
    real_cells.intersection(&generated_cells).count() as f64 / real_cells.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_of_gaussians_matches_the_closed_form() {
        tch::manual_seed(3);
        let a = Tensor::randn([20_000, 3], (Kind::Double, Device::Cpu));
        let b = Tensor::randn([20_000, 3], (Kind::Double, Device::Cpu)) * 2.0 + 1.0;
        // N(0, I) vs N(1, 4I): 3·1 + 3·(1 + 4 − 2·2) = 6.
        let fd = frechet_distance(&a, &b);
        assert!((fd - 6.0).abs() < 0.15, "{fd}");
        assert!(frechet_distance(&a, &a) < 1e-9);
    }

    #[test]
    fn a_pattern_repeated_in_every_patch_is_periodic_energy_and_noise_is_not() {
        tch::manual_seed(5);
        let pattern = Tensor::randn([3, 2, 4, 4], (Kind::Double, Device::Cpu));
        let tiled = pattern.repeat([1, 1, 8, 8]); // [3, 2, 32, 32]
        let centred = &pattern - pattern.mean_dim([2i64, 3].as_slice(), true, Kind::Double);
        let expected = centred.square().mean(Kind::Double).double_value(&[]);
        let e = patch_periodic_energy(&tiled, [4, 4]);
        assert!((e - expected).abs() < 1e-9, "{e} vs {expected}");
        // White noise leaves about 1/64 of its variance (the mean of 64 patches).
        let noise = Tensor::randn([3, 2, 32, 32], (Kind::Double, Device::Cpu));
        let n = patch_periodic_energy(&noise, [4, 4]);
        assert!(n < 0.03 && n > 0.005, "{n}");
        // A constant clip has none.
        assert!(
            patch_periodic_energy(
                &Tensor::ones([3, 2, 32, 32], (Kind::Double, Device::Cpu)),
                [4, 4]
            ) < 1e-12
        );
    }

    #[test]
    fn coverage_counts_real_cells_hit() {
        let real = [(0.1, 0.1), (0.9, 0.9), (0.1, 0.9), (0.6, 0.2)];
        assert_eq!(start_coverage(&real, &real, 4), 1.0);
        assert_eq!(start_coverage(&real, &[(0.1, 0.1); 10], 4), 0.25);
        assert_eq!(start_coverage(&real, &[], 4), 0.0);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// FD ≥ 0, symmetric, and a pure shift of a set by `d` costs exactly ‖d‖².
        #[test]
        fn frechet_is_symmetric_and_prices_a_shift_at_its_square(
            seed in 0i64..1000, dx in -3.0f64..3.0, dy in -3.0f64..3.0, scale in 0.2f64..3.0,
        ) {
            tch::manual_seed(seed);
            let a = Tensor::randn([64, 2], (Kind::Double, Device::Cpu));
            let b = Tensor::randn([64, 2], (Kind::Double, Device::Cpu)) * scale;
            let (ab, ba) = (frechet_distance(&a, &b), frechet_distance(&b, &a));
            prop_assert!(ab >= 0.0);
            prop_assert!((ab - ba).abs() < 1e-6 * (1.0 + ab), "{} vs {}", ab, ba);
            let shifted = &a + Tensor::from_slice(&[dx, dy]).view([1, 2]);
            let fd = frechet_distance(&a, &shifted);
            prop_assert!((fd - (dx * dx + dy * dy)).abs() < 1e-6, "{} vs {}", fd, dx * dx + dy * dy);
        }
    }
}
