//! The memory estimates' arithmetic.

use super::*;

#[test]
fn a_rank_holds_its_share_of_the_batch_and_with_zero1_of_the_optimizer_state() {
    let m = StepMemory {
        states: 1000,
        optimizer: 400,
        activations: 800,
        recomputed: 100,
    };
    let plain = m.per_rank(16, 8, 2, false, false);
    assert_eq!((plain.states, plain.activations), (1000, 400));
    let zero1 = m.per_rank(16, 8, 2, true, false);
    assert_eq!((zero1.states, zero1.optimizer), (800, 200));
    let both = m.per_rank(16, 8, 2, true, true);
    assert_eq!(both.total(), 800 + 50);
    // Recomputation keeps one value per block input instead of 68 bytes' worth.
    let full = activation_bytes(24, 1536, 4096, 1);
    let kept = recomputed_activation_bytes(24, 1536, 4096, 1);
    assert!(kept * 9 < full, "{kept} vs {full}");
    assert_eq!(kept, 1536 * 4096 * (VALUE * 24 + ACTIVATION_BYTES));
}

#[test]
fn adamw_with_ema_holds_five_copies_and_rmsprop_four() {
    let adamw = OptimizerConfig::Adamw {
        lr: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let rms = OptimizerConfig::Rmsprop {
        lr: 1e-4,
        alpha: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
        centered: false,
    };
    assert_eq!(trained_bytes(1000, &adamw, true), 1000 * 4 * 5);
    assert_eq!(trained_bytes(1000, &rms, true), 1000 * 4 * 4);
    assert_eq!(activation_bytes(2, 8, 10, 3), 2 * 8 * 10 * 3 * 68);
    assert_eq!(activation_bytes(usize::MAX, 8, 10, 3), u64::MAX);
    assert_eq!(human_bytes(2_500_000_000), "2.5 GB");
}

#[test]
fn sample_memory_overflows_to_none_and_grows_with_the_clip() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let small = sample_bytes(&cfg, 1, [4, 2, 16, 16]).unwrap();
    let big = sample_bytes(&cfg, 1, [4, 2, 32, 32]).unwrap();
    assert!(big > 3 * small, "{small} {big}");
    assert_eq!(sample_bytes(&cfg, u64::MAX, [4, 2, 16, 16]), None);
}
