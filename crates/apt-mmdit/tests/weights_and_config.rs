//! Weights on disk (strict, dtype-preserving, atomic) and configs (TOML, presets, diffusers JSON).

use std::path::PathBuf;

use apt_mmdit::{load_safetensors, save_safetensors, Mmdit, MmditConfig, MmditError, Positions};
use tch::{nn, Device, Kind, Tensor};

fn tiny_model() -> (nn::VarStore, Mmdit) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Mmdit::new(vs.root(), &MmditConfig::preset("tiny").unwrap()).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&v.randn_like());
        }
    });
    (vs, model)
}

fn weights_equal(a: &nn::VarStore, b: &nn::VarStore) -> bool {
    let bv = b.variables();
    a.variables()
        .iter()
        .all(|(k, v)| v.to_kind(Kind::Float).equal(&bv[k].to_kind(Kind::Float)))
}

#[test]
fn save_then_load_round_trips_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (vs, _m) = tiny_model();
    save_safetensors(&vs, &path).unwrap();
    save_safetensors(&vs, &path).unwrap(); // overwriting is fine
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let (vs2, _m2) = tiny_model();
    assert!(!weights_equal(&vs, &vs2));
    load_safetensors(&vs2, &path).unwrap();
    assert!(weights_equal(&vs, &vs2));
    // diffusers names
    let keys: Vec<String> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in [
        "pos_embed.proj.weight",
        "transformer_blocks.0.attn.to_out.0.weight",
        "transformer_blocks.2.norm1_context.linear.bias",
        "transformer_blocks.0.ff.net.0.proj.weight",
        "norm_out.linear.weight",
    ] {
        assert!(keys.iter().any(|k| k == key), "missing {key}");
    }
    assert!(
        !keys
            .iter()
            .any(|k| k == "transformer_blocks.2.attn.to_add_out.weight"),
        "last block is context-pre-only"
    );
}

#[test]
fn loading_keeps_the_model_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f32.safetensors");
    let (vs, _m) = tiny_model();
    save_safetensors(&vs, &path).unwrap();
    let (mut vs_bf16, _m2) = tiny_model();
    vs_bf16.bfloat16();
    load_safetensors(&vs_bf16, &path).unwrap();
    assert!(vs_bf16
        .variables()
        .values()
        .all(|v| v.kind() == Kind::BFloat16));
    // Values are the file's, rounded to bf16 (8 mantissa bits).
    let bv = vs_bf16.variables();
    for (k, v) in vs.variables() {
        let rel = ((&v - bv[&k].to_kind(Kind::Float)).abs() / (v.abs() + 1e-3))
            .max()
            .double_value(&[]);
        assert!(rel < 1e-2, "{k}: relative error {rel}");
    }
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let (vs, _m) = tiny_model();
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.retain(|(k, _)| k != "proj_out.bias");
    tensors.push((
        "extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    for (k, t) in tensors.iter_mut() {
        if k == "context_embedder.bias" {
            *t = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let err = load_safetensors(&vs, &path).unwrap_err();
    match &err {
        MmditError::Weights {
            missing,
            unexpected,
            mismatched,
            ..
        } => {
            assert_eq!(missing, &vec!["proj_out.bias".to_string()]);
            assert_eq!(unexpected, &vec!["extra.weight".to_string()]);
            assert_eq!(mismatched.len(), 1);
            assert!(mismatched[0].starts_with("context_embedder.bias"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("bad.safetensors")
            && msg.contains("proj_out.bias")
            && msg.contains("extra.weight"),
        "{msg}"
    );
}

#[test]
fn truncated_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    let (vs, _m) = tiny_model();
    save_safetensors(&vs, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_safetensors(&vs, &path).unwrap_err().to_string();
    assert!(msg.contains("cut.safetensors"), "{msg}");
    let msg = load_safetensors(&vs, dir.path().join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("absent.safetensors") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn presets_are_valid_and_toml_round_trips() {
    for name in MmditConfig::PRESETS {
        let cfg = MmditConfig::preset(name).unwrap();
        assert_eq!(
            MmditConfig::from_toml_str(&cfg.to_toml_string()).unwrap(),
            cfg,
            "{name}"
        );
    }
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/small.toml");
    assert_eq!(
        MmditConfig::from_toml_file(file).unwrap(),
        MmditConfig::preset("small").unwrap()
    );
    assert!(matches!(
        MmditConfig::preset("huge"),
        Err(MmditError::UnknownPreset { .. })
    ));
}

#[test]
fn config_errors_name_the_key() {
    let good = MmditConfig::preset("tiny").unwrap().to_toml_string();
    let err = MmditConfig::from_toml_str(&format!("{good}\nwidth = 3\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("width"), "{err}");
    let err = MmditConfig::from_toml_str(&good.replace("depth = 3", "depth = 0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("depth"), "{err}");
    let mut cfg = MmditConfig::preset("tiny").unwrap();
    cfg.positions = Positions::Rope3d {
        theta: 1e4,
        axes_dim: Some([4, 4, 4]),
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("positions.axes_dim"));
}

#[test]
fn diffusers_config_maps_onto_ours() {
    let json = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd3-qknorm/config.json"),
    )
    .unwrap();
    let cfg = MmditConfig::from_diffusers_json(&json).unwrap();
    assert_eq!(cfg.patch_size, [1, 2, 2]);
    assert_eq!(
        (
            cfg.depth,
            cfg.num_heads,
            cfg.head_dim,
            cfg.context_dim,
            cfg.pooled_dim
        ),
        (3, 2, 16, 40, 24)
    );
    assert!(cfg.qk_norm);
    assert_eq!(
        cfg.positions,
        Positions::Sincos2d {
            max_size: 12,
            base_size: 8
        }
    );
    let dual = json.replace(
        "\"dual_attention_layers\": []",
        "\"dual_attention_layers\": [0]",
    );
    assert!(MmditConfig::from_diffusers_json(&dual)
        .unwrap_err()
        .to_string()
        .contains("dual_attention_layers"));
}
