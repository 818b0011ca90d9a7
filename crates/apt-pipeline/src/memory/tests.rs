//! The memory estimates' arithmetic.

use super::*;

#[test]
fn a_rank_holds_its_share_of_the_batch_and_of_what_its_shard_mode_splits() {
    use apt_flow::train::ShardMode::{Full, Gradients, None as Plain, Optimizer};
    let sharding = Sharding {
        splittable: 900,
        working: 0,
        whole: 200,
        gathered: 20,
    };
    let m = StepMemory {
        states: 1000,
        optimizer: 400,
        activations: 800,
        recomputed: 100,
        sharding,
    };
    let plain = m.per_rank(16, 8, 2, Plain, false);
    assert_eq!((plain.states, plain.activations), (1000, 400));
    let zero1 = m.per_rank(16, 8, 2, Optimizer, false);
    assert_eq!((zero1.states, zero1.optimizer), (800, 200));
    let both = m.per_rank(16, 8, 2, Optimizer, true);
    assert_eq!(both.total(), 800 + 50);
    // ZeRO-2: 100 frozen + 900/2 split + 200 whole; ZeRO-3 with recomputation: 20 whole.
    assert_eq!(
        m.per_rank(16, 8, 2, Gradients, true).states,
        100 + 450 + 200
    );
    assert_eq!(m.per_rank(16, 8, 2, Full, true).states, 100 + 450 + 20);
    assert_eq!(m.per_rank(16, 8, 2, Full, false).states, 100 + 450 + 200);
    // One rank: nothing to split.
    assert_eq!(m.per_rank(16, 16, 1, Full, false).states, 1000);
    // Recomputation keeps one value per block input instead of 68 bytes' worth.
    let full = activation_bytes(24, 1536, 4096, 1);
    let kept = recomputed_activation_bytes(24, 1536, 4096, 1);
    assert!(kept * 9 < full, "{kept} vs {full}");
    assert_eq!(kept, 1536 * 4096 * (VALUE * 24 + ACTIVATION_BYTES));
}

#[test]
fn full_sharding_holds_a_block_of_each_network_and_what_a_graph_keeps() {
    let rms = OptimizerConfig::Rmsprop {
        lr: 1e-4,
        alpha: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
        momentum: 0.0,
        centered: false,
    };
    let net = |values| Trained {
        values,
        depth: 10,
        bytes_per_value: bytes_per_value(&rms, false),
    };
    let s = Sharding::of(&[net(1000), net(500)], Precision::Bf16, 500);
    assert_eq!(s.splittable, 1500 * 12);
    assert_eq!((s.working, s.whole), (1500 * 4, 1500 * 4));
    // G's phase: G's unit (200) with gradients, D whole (500): 2 bytes each.
    assert_eq!(s.gathered, (2 * 200 + 500) * 2);
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
