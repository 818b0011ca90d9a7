//! Clip sampling on real clips, and properties of the frame-index rule.

use apt_data::{assets, load_clip, ClipSpec, DataError, FrameStep, Placement};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn a_centred_clip_has_the_requested_shape_and_range() {
    let path = assets::clip("bikes.mp4").unwrap();
    let spec = ClipSpec::eval(8, 64, 48);
    let clip = load_clip(&path, &spec, &mut rng(0), None).unwrap();
    assert_eq!(clip.video.size(), vec![3, 8, 64, 48]);
    assert_eq!(clip.indices, (121..129).collect::<Vec<_>>()); // (250 - 8) / 2 = 121
    let (lo, hi) = (
        clip.video.min().double_value(&[]),
        clip.video.max().double_value(&[]),
    );
    assert!(
        (-1.0..-0.5).contains(&lo) && (0.5..=1.0).contains(&hi),
        "range {lo}..{hi}"
    );
    // Knowing the frame count lets the decoder keep only the needed frames: same clip.
    let again = load_clip(&path, &spec, &mut rng(0), Some((250, 25.0))).unwrap();
    assert!(again.video.equal(&clip.video));
}

#[test]
fn random_clips_are_seeded() {
    let path = assets::clip("carphone_pristine.mp4").unwrap();
    let spec = ClipSpec::eval(4, 32, 32).random();
    let a = load_clip(&path, &spec, &mut rng(7), None).unwrap();
    let b = load_clip(&path, &spec, &mut rng(7), None).unwrap();
    assert!(a.video.equal(&b.video) && a.indices == b.indices);
    let differ = (0..8u64).any(|s| {
        load_clip(&path, &spec, &mut rng(100 + s), None)
            .unwrap()
            .indices
            != a.indices
    });
    assert!(differ, "different seeds move the clip");
}

#[test]
fn target_fps_resamples_the_source() {
    let path = assets::clip("bikes.mp4").unwrap(); // 25 fps
    let spec = ClipSpec {
        step: FrameStep::Fps(12.5),
        ..ClipSpec::eval(5, 32, 32)
    };
    let clip = load_clip(&path, &spec, &mut rng(0), None).unwrap();
    let gaps: Vec<usize> = clip.indices.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, vec![2, 2, 2, 2]);
}

#[test]
fn images_are_one_frame_clips_and_short_clips_are_errors() {
    let png = assets::clip("astronaut.png").unwrap();
    let clip = load_clip(&png, &ClipSpec::eval(1, 64, 64), &mut rng(0), None).unwrap();
    assert_eq!(clip.video.size(), vec![3, 1, 64, 64]);
    let err = load_clip(&png, &ClipSpec::eval(2, 64, 64), &mut rng(0), None).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooShort {
                frames: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );
    let short = assets::clip("realshort.mp4").unwrap(); // 36 frames
    let err = load_clip(&short, &ClipSpec::eval(40, 32, 32), &mut rng(0), None).unwrap_err();
    assert!(
        err.to_string().contains("realshort.mp4") && err.to_string().contains("36"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn frame_indices_stay_in_range_and_keep_their_spacing(
        total in 1usize..400, n in 1usize..20, stride in 1usize..5, seed in 0u64..1000, random in any::<bool>(),
    ) {
        let mut spec = ClipSpec { step: FrameStep::Stride(stride), ..ClipSpec::eval(n, 8, 8) };
        if random { spec.offset = Placement::Random; }
        let fits = (n - 1) * stride < total;
        match spec.frame_indices(total, 25.0, &mut rng(seed)) {
            None => prop_assert!(!fits),
            Some(ix) => {
                prop_assert!(fits);
                prop_assert_eq!(ix.len(), n);
                prop_assert!(ix.iter().all(|&i| i < total));
                prop_assert!(ix.windows(2).all(|w| w[1] - w[0] == stride));
            }
        }
    }

    #[test]
    fn fps_resampling_never_leaves_the_video(total in 1usize..300, n in 1usize..16, src in 5.0f64..60.0, dst in 5.0f64..60.0, seed in 0u64..100) {
        let spec = ClipSpec { step: FrameStep::Fps(dst), ..ClipSpec::eval(n, 8, 8) }.random();
        if let Some(ix) = spec.frame_indices(total, src, &mut rng(seed)) {
            prop_assert!(ix.iter().all(|&i| i < total));
            prop_assert!(ix.windows(2).all(|w| w[1] >= w[0]));
        }
    }
}
