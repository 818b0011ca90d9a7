//! The family layer: `model.toml` round trips for both families, parameter names read off a
//! narrow model equal a real one's, and `Model` runs the family's own forward.

use apt_mmdit::{MmditConfig, Model, ModelConfig, WanConfig, WanTransformer};
use tch::{nn, Device, Kind, Tensor};

fn wan() -> WanConfig {
    WanConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 2,
        attention_head_dim: 12,
        in_channels: 4,
        out_channels: 4,
        text_dim: 16,
        freq_dim: 32,
        ffn_dim: 32,
        num_layers: 3,
        cross_attn_norm: true,
        qk_norm: Some("rms_norm_across_heads".into()),
        eps: 1e-6,
        image_dim: None,
        added_kv_proj_dim: None,
        rope_max_seq_len: 32,
        pos_embed_seq_len: None,
    }
}

#[test]
fn model_toml_round_trips_for_both_families_and_an_mmdit_has_no_family_key() {
    let mmdit = ModelConfig::Mmdit(MmditConfig::preset("tiny").unwrap());
    let text = mmdit.to_toml_string();
    assert!(!text.contains("family"), "{text}");
    assert_eq!(ModelConfig::from_toml_str(&text).unwrap(), mmdit);
    // An old model.toml (MmditConfig's own TOML) still reads.
    let old = MmditConfig::preset("tiny").unwrap().to_toml_string();
    assert_eq!(ModelConfig::from_toml_str(&old).unwrap(), mmdit);

    let w = ModelConfig::Wan(wan());
    let text = w.to_toml_string();
    assert!(text.starts_with("family = \"wan\""), "{text}");
    assert_eq!(ModelConfig::from_toml_str(&text).unwrap(), w);
    assert_eq!((w.depth(), w.hidden_size(), w.pooled_dim()), (3, 24, 0));

    let bad = ModelConfig::from_toml_str("family = \"unet\"").unwrap_err();
    assert!(bad.to_string().contains("family"), "{bad}");
    let unknown = format!("{text}\nwidth = 3\n");
    assert!(ModelConfig::from_toml_str(&unknown).is_err());
}

#[test]
fn parameter_names_and_counts_equal_a_built_model() {
    for cfg in [
        ModelConfig::Wan(wan()),
        ModelConfig::Mmdit(MmditConfig::preset("tiny").unwrap()),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        Model::new(vs.root(), &cfg).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(cfg.parameter_names().unwrap(), names, "{}", cfg.family());
        let count: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(cfg.parameter_count(), count as u64, "{}", cfg.family());
    }
}

#[test]
fn the_family_model_runs_the_wan_forward_and_taps() {
    let cfg = wan();
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let direct = WanTransformer::new(vs.root(), &cfg).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let model = Model::new(vs2.root(), &ModelConfig::Wan(cfg)).unwrap();
    let mut vs2 = vs2;
    vs2.copy(&vs).unwrap();
    let x = Tensor::randn([2, 4, 2, 4, 4], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.25f32, 0.75]);
    let ctx = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
    let pooled = Tensor::zeros([2, 0], (Kind::Float, Device::Cpu));
    let a = direct.forward(&x, &t, &ctx).unwrap();
    let b = model.forward(&x, &t, &ctx, &pooled).unwrap();
    assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0);
    let tapped = model
        .forward_with_taps(&x, &t, &ctx, &pooled, &[2], false)
        .unwrap();
    assert!(tapped.output.is_none());
    assert_eq!(tapped.taps[0].size(), vec![2, 8, 24]);
}

#[test]
fn a_bf16_wan_takes_fp32_inputs_and_stays_near_its_fp32_output() {
    let cfg = ModelConfig::Wan(wan());
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(5);
    let model = Model::new(vs.root(), &cfg).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let noisy = &v + v.randn_like() * 0.05;
            v.copy_(&noisy);
        }
    });
    let x = Tensor::randn([1, 4, 2, 4, 4], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.5f32]);
    let ctx = Tensor::randn([1, 5, 16], (Kind::Float, Device::Cpu));
    let pooled = Tensor::zeros([1, 0], (Kind::Float, Device::Cpu));
    let full = model.forward(&x, &t, &ctx, &pooled).unwrap();
    let mut vs = vs;
    vs.bfloat16();
    let half = model.forward(&x, &t, &ctx, &pooled).unwrap();
    assert_eq!(half.kind(), Kind::BFloat16);
    let err = (half.to_kind(Kind::Float) - &full)
        .abs()
        .max()
        .double_value(&[]);
    let scale = full.abs().max().double_value(&[]);
    assert!(err <= 0.05 * scale, "bf16 error {err} at scale {scale}");
}

#[test]
fn a_wan_model_writes_a_diffusers_directory_single_or_sharded_that_loads_back() {
    let cfg = ModelConfig::Wan(wan());
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(vs.root(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let same = |path: &std::path::Path| {
        let back_vs = nn::VarStore::new(Device::Cpu);
        let back = Model::from_diffusers_dir(&back_vs, path).unwrap();
        assert_eq!(back.config(), &cfg);
        let (a, b) = (vs.variables(), back_vs.variables());
        assert_eq!(a.len(), b.len());
        for (k, v) in &a {
            assert!(v.equal(&b[k]), "{k}");
        }
    };
    let out = dir.path().join("transformer");
    model.save_diffusers_dir(&vs, &out, 10_000_000_000).unwrap();
    assert!(out.join("diffusion_pytorch_model.safetensors").is_file());
    same(&out);
    // Shards of 4 KB: an index and several files; the single file of the first save goes.
    model.save_diffusers_dir(&vs, &out, 4096).unwrap();
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().filter(|n| n.contains("-of-")).count() > 2,
        "{names:?}"
    );
    assert!(!names.contains(&"diffusion_pytorch_model.safetensors".to_string()));
    same(&out);
    // An MMDiT is no diffusers class: refused, naming the family.
    let vs = nn::VarStore::new(Device::Cpu);
    let mmdit = Model::new(vs.root(), &MmditConfig::preset("tiny").unwrap().into()).unwrap();
    let err = mmdit
        .save_diffusers_dir(&vs, &dir.path().join("m"), 1 << 30)
        .unwrap_err();
    assert!(err.to_string().contains("mmdit"), "{err}");
}
