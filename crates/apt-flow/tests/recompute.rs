//! Activation recomputation in the training steps: with `recompute`, pre-training (velocity and
//! clean-sample prediction), pair distillation and consistency distillation leave the same
//! parameter gradients and log the same loss as the plain backward, and a whole run through the
//! loop (`TrainConfig::recompute`) ends at the same weights.

use apt_flow::data::CaptionEncoder;
use apt_flow::distill::{
    ConsistencyConfig, ConsistencyStep, ConsistencyTarget, PairDistillStep, Pairs,
};
use apt_flow::pretrain::{FlowMatchingConfig, FlowMatchingStep};
use apt_flow::train::{
    MetricLine, OptimizerConfig, Part, Shard, StepLog, TrainConfig, TrainStep, Trainer,
};
use apt_flow::TensorRng;
use apt_mmdit::Mmdit;
use tch::{nn, Tensor};

mod common;

use common::*;

/// Gradients of `vs` by name (zeros where none).
fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut g: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| {
            let g = v.grad();
            (
                k,
                if g.defined() {
                    g.copy()
                } else {
                    v.zeros_like()
                },
            )
        })
        .collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    g
}

/// Largest gradient difference relative to the largest gradient.
fn relative_gap(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    let mut gap: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for ((ka, ta), (kb, tb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        gap = gap.max((ta - tb).abs().max().double_value(&[]));
        scale = scale.max(ta.abs().max().double_value(&[]));
    }
    assert!(scale > 0.0, "no gradient at all");
    gap / scale
}

/// One micro-batch backward of `make(recompute)`'s step on a fresh model from the same seed,
/// plain and recomputed: (relative gradient gap, plain loss, recomputed loss).
fn compare(
    prediction: &str,
    mut run: impl FnMut(&Mmdit, bool, &mut StepLog) -> f64,
) -> (f64, f64, f64) {
    let mut out = Vec::new();
    for recompute in [false, true] {
        let (vs, m) = model(prediction, 11);
        let mut log = StepLog::default();
        let loss = run(&m, recompute, &mut log);
        out.push((grads(&vs), loss));
    }
    (relative_gap(&out[0].0, &out[1].0), out[0].1, out[1].1)
}

fn assert_same(what: &str, (gap, plain, recomputed): (f64, f64, f64)) {
    eprintln!("{what}: relative gradient gap {gap:e}, loss {plain} vs {recomputed}");
    assert!(
        gap < 1e-5,
        "{what}: gradients differ by {gap:e} of their scale"
    );
    assert!(
        (plain - recomputed).abs() <= 1e-6 * plain.abs().max(1.0),
        "{what}: {plain} vs {recomputed}"
    );
}

#[test]
fn recomputed_flow_matching_has_the_plain_gradients_for_both_predictions() {
    for prediction in ["velocity", "sample"] {
        let gaps = compare(prediction, |m, recompute, log| {
            let mut data = clips();
            let mut step = FlowMatchingStep {
                model: m,
                data: &mut data,
                text: &HashedCaptions,
                batch: 4,
                shard: Shard::WHOLE,
                recompute,
                config: FlowMatchingConfig {
                    p_uncond: 0.25,
                    ..FlowMatchingConfig::default()
                },
                device: CPU,
            };
            step.backward(0, &mut TensorRng::new(5, 0), log, 2)
                .unwrap()
                .double_value(&[])
        });
        assert_same(&format!("flow matching ({prediction})"), gaps);
    }
}

#[test]
fn recomputed_pair_and_consistency_distillation_have_the_plain_gradients() {
    let (_, teacher) = model("velocity", 3);
    let null = HashedCaptions.encode(&[String::new()], &[]).unwrap();
    let cond = HashedCaptions
        .encode(
            &(0..6).map(|i| format!("clip {i}")).collect::<Vec<_>>(),
            &[],
        )
        .unwrap();
    let sampler = apt_flow::SamplerConfig {
        steps: 3,
        ..apt_flow::SamplerConfig::paper_baseline()
    };
    let z = TensorRng::new(9, 0).normal(&[6, 3, 2, 16, 16], CPU);
    let pairs = Pairs::generate(&teacher, z, cond, &null, &sampler).unwrap();
    let gaps = compare("velocity", |m, recompute, log| {
        let mut step = PairDistillStep::new(m, &pairs, 4, 0).with_recompute(recompute);
        step.backward(0, &mut TensorRng::new(5, 0), log, 1)
            .unwrap()
            .double_value(&[])
    });
    assert_same("pair distillation", gaps);
    let gaps = compare("velocity", |m, recompute, log| {
        let mut data = clips();
        let cfg = ConsistencyConfig {
            points: 8,
            shift: 1.0,
            cfg_scale: 2.0,
            target: ConsistencyTarget::StopGradient,
        };
        let mut step =
            ConsistencyStep::new(&cfg, m, &teacher, None, &mut data, &HashedCaptions, 4, CPU)
                .unwrap()
                .with_recompute(recompute);
        step.backward(0, &mut TensorRng::new(5, 0), log, 1)
            .unwrap()
            .double_value(&[])
    });
    assert_same("consistency distillation", gaps);
}

#[test]
fn a_run_with_recompute_ends_at_the_weights_of_a_plain_run() {
    let mut ends = Vec::new();
    for recompute in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (vs, m) = model("velocity", 11);
        let adamw = OptimizerConfig::Adamw {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let config = TrainConfig {
            grad_accum: 2,
            recompute,
            ..TrainConfig::new(3, 4, adamw)
        };
        let part = Part::new("model", vs, adamw, None).unwrap();
        let mut trainer = Trainer::new(
            "pretrain",
            dir.path(),
            &config,
            vec![part],
            TensorRng::new(1, 0),
        )
        .unwrap();
        let mut data = clips();
        let mut step = FlowMatchingStep {
            model: &m,
            data: &mut data,
            text: &HashedCaptions,
            batch: 4,
            shard: Shard::WHOLE,
            recompute: config.recompute,
            config: FlowMatchingConfig {
                p_uncond: 0.25,
                ..FlowMatchingConfig::default()
            },
            device: CPU,
        };
        trainer.run(&mut step, &mut |_: &MetricLine| {}).unwrap();
        let mut w: Vec<(String, Tensor)> = trainer.parts[0].vs.variables().into_iter().collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        ends.push(w);
    }
    let diff = ends[0]
        .iter()
        .zip(&ends[1])
        .map(|((_, a), (_, b))| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "weights after 3 updates differ by {diff:e}");
}
