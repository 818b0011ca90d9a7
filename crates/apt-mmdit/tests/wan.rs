//! The Wan 2.1 transformer against diffusers' `WanTransformer3DModel` (fixtures made by
//! scripts/make_wan_fixtures.py with diffusers 0.42.1): the same output on random models of
//! diffusers' test size and of a video size (3 latent frames, non-square, batch 2, two
//! timesteps), the released key sets, taps, and input errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apt_mmdit::wan::{WanConfig, WanTransformer};
use tch::{nn, Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan")
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn parity(name: &str) -> f64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = WanTransformer::from_diffusers_dir(&vs, &fixtures().join(name)).unwrap();
    let io = read(&fixtures().join(format!("{name}.io.safetensors")));
    let out = tch::no_grad(|| {
        model.forward_diffusers(
            &io["hidden_states"],
            &io["timestep"],
            &io["encoder_hidden_states"],
        )
    })
    .unwrap();
    assert_eq!(out.size(), io["sample"].size());
    (out - &io["sample"]).abs().max().double_value(&[])
}

#[test]
fn the_output_equals_diffusers_on_its_test_config_and_on_video() {
    for name in ["wan-test", "wan-video"] {
        let diff = parity(name);
        println!("{name}: max abs difference {diff:e}");
        assert!(diff <= 1e-5, "{name}: max abs difference {diff:e}");
    }
}

/// Names and shapes of a released model as diffusers builds it, from the fixture script's
/// meta-device state dict.
fn released(name: &str) -> (u64, BTreeMap<String, Vec<i64>>) {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.keys.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensors = json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (k.clone(), shape)
        })
        .collect();
    (json["parameters"].as_u64().unwrap(), tensors)
}

#[test]
fn the_released_key_sets_and_shapes_are_diffusers() {
    for (name, cfg) in [
        ("wan2.1-1.3b", WanConfig::wan21_1_3b()),
        ("wan2.1-14b", WanConfig::wan21_14b()),
    ] {
        let (parameters, want) = released(name);
        assert_eq!(cfg.parameter_count(), parameters, "{name}");
        // Every block has the same variables: build two of them (the full 14B would take
        // 57 GB) and check their names and shapes, and the rest, against diffusers'.
        let two = WanConfig {
            num_layers: 2,
            ..cfg.clone()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        tch::no_grad(|| WanTransformer::new(vs.root(), &two)).unwrap();
        let ours: BTreeMap<String, Vec<i64>> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        let in_two = |k: &String| {
            !k.starts_with("blocks.") || k.starts_with("blocks.0.") || k.starts_with("blocks.1.")
        };
        let want_two: BTreeMap<String, Vec<i64>> = want
            .iter()
            .filter(|(k, _)| in_two(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(ours, want_two, "{name}");
        let blocks = want.keys().filter(|k| k.starts_with("blocks.0.")).count();
        assert_eq!(
            want.len(),
            want_two.len() + (cfg.num_layers - 2) * blocks,
            "{name}: every block alike"
        );
    }
}

#[test]
fn taps_are_the_hidden_states_of_a_full_forward_and_bad_inputs_name_the_argument() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = WanTransformer::from_diffusers_dir(&vs, &fixtures().join("wan-video")).unwrap();
    let io = read(&fixtures().join("wan-video.io.safetensors"));
    let (x, context) = (&io["hidden_states"], &io["encoder_hidden_states"]);
    let t = Tensor::from_slice(&[0.25f32, 0.75]);
    let full = tch::no_grad(|| model.forward_with_taps(x, &t, context, &[1, 3], true)).unwrap();
    let early = tch::no_grad(|| model.forward_with_taps(x, &t, context, &[1], false)).unwrap();
    assert!(early.output.is_none());
    assert!(full.taps[0].equal(&early.taps[0]));
    assert_eq!(full.taps[1].size(), vec![2, 3 * 6 * 10, 24]);
    let out = tch::no_grad(|| model.forward(x, &t, context)).unwrap();
    assert!(out.equal(full.output.as_ref().unwrap()));
    let e = model
        .forward(&x.narrow(4, 0, 19), &t, context)
        .unwrap_err()
        .to_string();
    assert!(e.contains("latents"), "{e}");
    let e = model
        .forward(x, &t, &context.narrow(2, 0, 8))
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
}

#[test]
fn recomputed_gradients_equal_the_plain_backward() {
    let grads = |recompute: bool| {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = WanTransformer::from_diffusers_dir(&vs, &fixtures().join("wan-video")).unwrap();
        let io = read(&fixtures().join("wan-video.io.safetensors"));
        let (x, context) = (&io["hidden_states"], &io["encoder_hidden_states"]);
        let t = Tensor::from_slice(&[0.25f32, 0.75]);
        let loss = |taps: &apt_mmdit::TapOutput| {
            taps.output
                .as_ref()
                .unwrap()
                .square()
                .mean(tch::Kind::Float)
                + taps.taps[0].abs().mean(tch::Kind::Float)
        };
        if recompute {
            let _loss = model
                .backward_with_recompute(x, &t, context, &[2], true, loss)
                .unwrap();
        } else {
            let out = model.forward_with_taps(x, &t, context, &[2], true).unwrap();
            loss(&out).backward();
        }
        let mut g: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.grad().copy()))
            .collect();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        g
    };
    let (plain, recomputed) = (grads(false), grads(true));
    assert_eq!(plain.len(), recomputed.len());
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        assert!(a.defined() && b.defined(), "{name}: no gradient");
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{name}: {diff:e} (|g| {scale:e})"
        );
    }
}
