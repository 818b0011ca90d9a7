//! Behaviour of the model on tiny configs: shapes, taps, adaLN-Zero, input errors, attention
//! backends (including double backward), and the analytic parameter count.

use apt_mmdit::{param_count, AttentionBackend, Mmdit, MmditConfig, MmditError, Positions};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

struct Inputs {
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
    pooled: Tensor,
}

fn inputs(cfg: &MmditConfig, b: i64, thw: [i64; 3], l: i64) -> Inputs {
    Inputs {
        x: Tensor::randn([b, cfg.in_channels as i64, thw[0], thw[1], thw[2]], CPU),
        t: Tensor::rand([b], CPU),
        ctx: Tensor::randn([b, l, cfg.context_dim as i64], CPU),
        pooled: Tensor::randn([b, cfg.pooled_dim as i64], CPU),
    }
}

/// A model whose every variable is randomised (a fresh adaLN-Zero model is the identity).
/// (Tests run in parallel and share libtorch's generator: never rely on a seed across calls.)
fn randomised(cfg: &MmditConfig) -> (nn::VarStore, Mmdit) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), cfg).unwrap();
    tch::no_grad(|| {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let noise = v.randn_like() * 0.1;
            v.copy_(&(&v + noise));
        }
    });
    (vs, model)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn video_output_has_the_input_shape_and_fresh_models_predict_zero() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), &cfg).unwrap();
    let i = inputs(&cfg, 2, [4, 6, 10], 5);
    let v = model.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    assert_eq!(v.size(), i.x.size());
    assert_eq!(
        v.abs().max().double_value(&[]),
        0.0,
        "adaLN-Zero: zero output at init"
    );
}

#[test]
fn taps_are_the_hidden_states_of_a_full_forward_and_stopping_early_changes_nothing() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 2, [2, 4, 6], 3);
    let full = model
        .forward_with_taps(&i.x, &i.t, &i.ctx, &i.pooled, &[1, 3, 2], true)
        .unwrap();
    let plain = model.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    assert_eq!(max_diff(full.output.as_ref().unwrap(), &plain), 0.0);
    assert_eq!(full.taps.len(), 3);
    assert_eq!(full.taps[0].size(), vec![2, 2 * 2 * 3, 32]);
    let early = model
        .forward_with_taps(&i.x, &i.t, &i.ctx, &i.pooled, &[2], false)
        .unwrap();
    assert!(early.output.is_none());
    assert_eq!(max_diff(&early.taps[0], &full.taps[2]), 0.0);
    assert!(
        max_diff(&full.taps[0], &full.taps[2]) > 1e-3,
        "taps differ between blocks"
    );
}

#[test]
fn a_single_time_value_broadcasts_over_the_batch() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 3, [1, 4, 4], 2);
    let a = model
        .forward(&i.x, &Tensor::from(0.4f32), &i.ctx, &i.pooled)
        .unwrap();
    let b = model
        .forward(&i.x, &Tensor::from_slice(&[0.4f32; 3]), &i.ctx, &i.pooled)
        .unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn samples_in_a_batch_do_not_interact() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 2, [2, 4, 4], 3);
    let both = model.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    let first = model
        .forward(
            &i.x.narrow(0, 0, 1),
            &i.t.narrow(0, 0, 1),
            &i.ctx.narrow(0, 0, 1),
            &i.pooled.narrow(0, 0, 1),
        )
        .unwrap();
    assert!(max_diff(&both.narrow(0, 0, 1), &first) < 1e-5);
}

#[test]
fn every_position_and_norm_combination_runs_on_video() {
    for (qk_norm, positions) in [
        (
            false,
            Positions::Rope3d {
                theta: 1e4,
                axes_dim: None,
            },
        ),
        (
            true,
            Positions::Sincos2d {
                max_size: 6,
                base_size: 4,
            },
        ),
        (
            false,
            Positions::Sincos2d {
                max_size: 6,
                base_size: 4,
            },
        ),
    ] {
        let mut cfg = MmditConfig::preset("tiny").unwrap();
        cfg.qk_norm = qk_norm;
        cfg.positions = positions;
        let (_vs, model) = randomised(&cfg);
        let i = inputs(&cfg, 2, [3, 4, 6], 5);
        let v = model.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
        assert_eq!(v.size(), i.x.size());
        assert!(v.abs().max().double_value(&[]) > 0.0);
    }
}

#[test]
fn frames_are_told_apart_by_3d_rope() {
    // The same content in two frames must not give the same output at both (time positions).
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 1, [1, 4, 4], 3);
    let x = Tensor::cat(&[&i.x, &i.x], 2);
    let v = model.forward(&x, &i.t, &i.ctx, &i.pooled).unwrap();
    assert!(max_diff(&v.narrow(2, 0, 1), &v.narrow(2, 1, 1)) > 1e-4);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 2, [2, 4, 4], 3);
    let err = |r: apt_mmdit::Result<Tensor>| match r {
        Err(MmditError::Input { argument, .. }) => argument,
        other => panic!("expected an input error, got {other:?}"),
    };
    let odd = Tensor::randn([2, 4, 2, 5, 4], CPU);
    assert_eq!(err(model.forward(&odd, &i.t, &i.ctx, &i.pooled)), "latents");
    let channels = Tensor::randn([2, 3, 2, 4, 4], CPU);
    assert_eq!(
        err(model.forward(&channels, &i.t, &i.ctx, &i.pooled)),
        "latents"
    );
    assert_eq!(
        err(model.forward(&i.x, &Tensor::rand([3], CPU), &i.ctx, &i.pooled)),
        "t"
    );
    assert_eq!(
        err(model.forward(&i.x, &i.t, &Tensor::randn([2, 3, 31], CPU), &i.pooled)),
        "context"
    );
    assert_eq!(
        err(model.forward(&i.x, &i.t, &i.ctx, &Tensor::randn([1, 32], CPU))),
        "pooled"
    );
    let msg = model
        .forward(&odd, &i.t, &i.ctx, &i.pooled)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("latents") && msg.contains("[2, 4, 2, 5, 4]"),
        "{msg}"
    );
    assert!(matches!(
        model.forward_with_taps(&i.x, &i.t, &i.ctx, &i.pooled, &[4], false),
        Err(MmditError::Input {
            argument: "taps",
            ..
        })
    ));
}

#[test]
fn math_attention_equals_sdpa_and_supports_double_backward() {
    let mut cfg = MmditConfig::preset("tiny").unwrap();
    let (_vs, sdpa) = randomised(&cfg);
    cfg.attention = AttentionBackend::Math;
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let math = Mmdit::new(vs2.root(), &cfg).unwrap();
    vs2.copy(&_vs).unwrap();
    let i = inputs(&cfg, 2, [2, 4, 4], 3);
    let a = sdpa.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    let b = math.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    assert!(
        max_diff(&a, &b) < 1e-5,
        "sdpa and math differ by {}",
        max_diff(&a, &b)
    );

    // Exact R1 needs d/dθ ‖∇ₓ D(x)‖²: a double backward through attention.
    let x = i.x.detach().set_requires_grad(true);
    let out = math
        .forward(&x, &i.t, &i.ctx, &i.pooled)
        .unwrap()
        .square()
        .sum(Kind::Float);
    let g = Tensor::run_backward(&[&out], &[&x], true, true)
        .pop()
        .unwrap();
    let penalty = g.square().sum(Kind::Float);
    penalty.backward();
    let total: f64 = vs2
        .trainable_variables()
        .iter()
        .map(|v| v.grad().abs().sum(Kind::Float).double_value(&[]))
        .sum();
    assert!(total.is_finite() && total > 0.0);
}

#[test]
fn analytic_parameter_count_matches_built_models() {
    let mut configs: Vec<MmditConfig> = ["tiny", "small"]
        .iter()
        .map(|n| MmditConfig::preset(n).unwrap())
        .collect();
    let mut sincos = MmditConfig::preset("tiny").unwrap();
    sincos.positions = Positions::Sincos2d {
        max_size: 8,
        base_size: 4,
    };
    sincos.qk_norm = false;
    sincos.patch_size = [2, 2, 2];
    sincos.mlp_ratio = 2;
    configs.push(sincos);
    for cfg in configs {
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = Mmdit::new(vs.root(), &cfg).unwrap();
        let built: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(param_count(&cfg).total() as i64, built, "{cfg:?}");
    }
    let tiny = param_count(&MmditConfig::preset("tiny").unwrap()).total();
    assert!(tiny < 1_000_000, "tiny has {tiny} parameters");
}

#[test]
fn seaweed_8b_preset_has_8b_parameters() {
    let n = param_count(&MmditConfig::preset("seaweed-8b").unwrap()).total() as f64;
    assert!((n / 8e9 - 1.0).abs() <= 0.05, "{n}");
    let sd3 = param_count(&MmditConfig::preset("sd3-medium").unwrap()).total() as f64;
    assert!(
        (sd3 / 2.03e9 - 1.0).abs() < 0.02,
        "SD3 Medium's transformer is ~2.03B, got {sd3}"
    );
}

#[test]
fn bf16_models_run_and_track_fp32() {
    let cfg = MmditConfig::preset("tiny").unwrap();
    let (vs, model) = randomised(&cfg);
    let i = inputs(&cfg, 2, [2, 4, 4], 3);
    let reference = model.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    let mut vs16 = nn::VarStore::new(Device::Cpu);
    let model16 = Mmdit::new(vs16.root(), &cfg).unwrap();
    vs16.copy(&vs).unwrap();
    vs16.bfloat16();
    let out = model16.forward(&i.x, &i.t, &i.ctx, &i.pooled).unwrap();
    assert_eq!(out.kind(), Kind::BFloat16);
    let rel =
        max_diff(&out.to_kind(Kind::Float), &reference) / reference.abs().max().double_value(&[]);
    assert!(rel < 0.05, "bf16 vs fp32 relative difference {rel}");
}

#[test]
fn parameter_names_are_those_of_the_full_size_model() {
    let mut sincos = MmditConfig::preset("tiny").unwrap();
    sincos.positions = Positions::Sincos2d {
        max_size: 8,
        base_size: 4,
    };
    let mut no_qk_norm = MmditConfig::preset("small").unwrap();
    no_qk_norm.qk_norm = false;
    for cfg in [
        MmditConfig::preset("tiny").unwrap(),
        MmditConfig::preset("small").unwrap(),
        sincos,
        no_qk_norm,
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        Mmdit::new(vs.root(), &cfg).unwrap();
        let mut full: Vec<String> = vs.variables().into_keys().collect();
        full.sort();
        assert_eq!(Mmdit::parameter_names(&cfg).unwrap(), full, "{cfg:?}");
    }
    // The 8B preset's names without allocating its 32 GB.
    let big = Mmdit::parameter_names(&MmditConfig::preset("seaweed-8b").unwrap()).unwrap();
    assert!(big.iter().any(|n| n.starts_with("transformer_blocks.35.")));
}
