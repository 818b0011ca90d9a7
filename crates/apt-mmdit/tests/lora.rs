//! LoRA against diffusers + PEFT (fixture: scripts/make_lora_fixture.py): a diffusers-saved
//! adapter merged into our Wan model gives diffusers' forward; our adapted model starts as the
//! base, computes what PEFT computes, writes the file layout diffusers reads, and merges into
//! a plain model exactly; bad adapters and targets are refused by name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apt_mmdit::lora::{
    merge_adapter_file, merged_weights, save_adapter_file, with_lora, LoraConfig,
};
use apt_mmdit::{MmditConfig, Model, ModelConfig};
use tch::{nn, Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: Some(8.0),
        dropout: 0.0,
        targets: ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.2"]
            .map(String::from)
            .to_vec(),
    }
}

fn wan_dir() -> PathBuf {
    fixtures().join("wan/wan-test")
}

fn forward(model: &Model, io: &BTreeMap<String, Tensor>) -> Tensor {
    let f = |k: &str| io[k].to_kind(Kind::Float);
    let pooled = Tensor::zeros([1, 0], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        model
            .forward(
                &f("hidden_states"),
                &(f("timestep") / 1000.0),
                &f("encoder_hidden_states"),
                &pooled,
            )
            .unwrap()
    })
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Copies same-named tensors of `from` into `vs` (the base weights into an adapted model).
fn copy_in(vs: &nn::VarStore, from: &BTreeMap<String, Tensor>) -> usize {
    let mut n = 0;
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if let Some(t) = from.get(&k) {
                v.copy_(t);
                n += 1;
            }
        }
    });
    n
}

#[test]
fn a_diffusers_adapter_merged_into_our_model_gives_diffusers_forward() {
    let io = read(&fixtures().join("lora/wan-lora.io.safetensors"));
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::from_diffusers_dir(&vs, &wan_dir()).unwrap();
    assert!(max_diff(&forward(&model, &io), &io["sample_base"]) < 1e-5);
    let merged = merge_adapter_file(&vs, &fixtures().join("lora/wan-lora.safetensors")).unwrap();
    assert_eq!(
        merged, 18,
        "4 attention targets in attn1 and attn2, and ffn.net.2, in 2 blocks"
    );
    let d = max_diff(&forward(&model, &io), &io["sample"]);
    assert!(d < 1e-5, "max abs difference {d}");
}

#[test]
fn our_adapters_start_as_the_base_compute_what_peft_computes_and_write_what_diffusers_reads() {
    let io = read(&fixtures().join("lora/wan-lora.io.safetensors"));
    let theirs = read(&fixtures().join("lora/wan-lora.safetensors"));
    let base = read(&wan_dir().join("diffusion_pytorch_model.safetensors"));
    let cfg = ModelConfig::from_diffusers_dir(&wan_dir()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let (model, matched) = with_lora(&lora(), || Model::new(vs.root(), &cfg)).unwrap();
    assert_eq!(matched.len(), 18, "{matched:?}");
    assert_eq!(copy_in(&vs, &base), base.len());
    // B starts at zero: the adapted model is the base model.
    assert_eq!(max_diff(&forward(&model, &io), &forward_base(&io)), 0.0);
    // With the fixture's A and B (PEFT's names without the `transformer.` prefix): diffusers'.
    let adapters: BTreeMap<String, Tensor> = theirs
        .iter()
        .map(|(k, v)| (k["transformer.".len()..].to_string(), v.shallow_clone()))
        .collect();
    assert_eq!(copy_in(&vs, &adapters), 36);
    let d = max_diff(&forward(&model, &io), &io["sample"]);
    assert!(d < 1e-5, "max abs difference {d}");

    // Our file: diffusers' keys and shapes, and it merges back to the same forward.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lora.safetensors");
    assert_eq!(save_adapter_file(&vs, &lora(), "", &file).unwrap(), 18);
    let ours = read(&file);
    let shapes = |m: &BTreeMap<String, Tensor>| -> Vec<(String, Vec<i64>)> {
        m.iter().map(|(k, v)| (k.clone(), v.size())).collect()
    };
    assert_eq!(shapes(&ours), shapes(&theirs));
    let plain_vs = nn::VarStore::new(Device::Cpu);
    let plain = Model::from_diffusers_dir(&plain_vs, &wan_dir()).unwrap();
    merge_adapter_file(&plain_vs, &file).unwrap();
    assert!(max_diff(&forward(&plain, &io), &io["sample"]) < 1e-5);

    // Merged weights: a full model without adapters, the same forward.
    let merged: BTreeMap<String, Tensor> =
        merged_weights(&vs, lora().scale()).into_iter().collect();
    assert_eq!(merged.len(), base.len());
    let full_vs = nn::VarStore::new(Device::Cpu);
    let full = Model::new(full_vs.root(), &cfg).unwrap();
    assert_eq!(copy_in(&full_vs, &merged), base.len());
    assert!(max_diff(&forward(&full, &io), &io["sample"]) < 1e-5);
}

fn forward_base(io: &BTreeMap<String, Tensor>) -> Tensor {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::from_diffusers_dir(&vs, &wan_dir()).unwrap();
    forward(&model, io)
}

#[test]
fn the_mmdit_fused_projections_take_their_adapters() {
    let cfg = ModelConfig::Mmdit(MmditConfig::preset("tiny").unwrap());
    let targets = LoraConfig {
        targets: vec!["to_q".into(), "add_k_proj".into(), "proj_out".into()],
        ..lora()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let (model, matched) = with_lora(&targets, || Model::new(vs.root(), &cfg)).unwrap();
    assert!(
        matched.iter().any(|m| m.ends_with("attn.add_k_proj")),
        "{matched:?}"
    );
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let noisy = &v + v.randn_like() * 0.05;
            v.copy_(&noisy);
        }
    });
    let x = Tensor::randn([1, 4, 2, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.4f32]);
    let ctx = Tensor::randn([1, 6, 32], (Kind::Float, Device::Cpu));
    let pooled = Tensor::randn([1, 32], (Kind::Float, Device::Cpu));
    let adapted = tch::no_grad(|| model.forward(&x, &t, &ctx, &pooled).unwrap());
    let full_vs = nn::VarStore::new(Device::Cpu);
    let full = Model::new(full_vs.root(), &cfg).unwrap();
    let merged: BTreeMap<String, Tensor> =
        merged_weights(&vs, targets.scale()).into_iter().collect();
    copy_in(&full_vs, &merged);
    let plain = tch::no_grad(|| full.forward(&x, &t, &ctx, &pooled).unwrap());
    let d = max_diff(&adapted, &plain);
    assert!(d < 1e-5, "max abs difference {d}");
}

#[test]
fn targets_that_match_nothing_and_adapters_of_another_model_are_refused() {
    let cfg = ModelConfig::from_diffusers_dir(&wan_dir()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let bad = LoraConfig {
        targets: vec!["to_q".into(), "no_such_layer".into()],
        ..lora()
    };
    let err = with_lora(&bad, || Model::new(vs.root(), &cfg))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no_such_layer"), "{err}");

    // The Wan adapter into an MMDiT: no such layer, named with the file.
    let mm_vs = nn::VarStore::new(Device::Cpu);
    Model::new(mm_vs.root(), &MmditConfig::preset("tiny").unwrap().into()).unwrap();
    let file = fixtures().join("lora/wan-lora.safetensors");
    let err = merge_adapter_file(&mm_vs, &file).unwrap_err().to_string();
    assert!(
        err.contains("wan-lora.safetensors") && err.contains("another model"),
        "{err}"
    );

    // A rank-8 adapter whose B does not fit its A.
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = read(&file);
    let key = "transformer.blocks.0.attn1.to_q.lora_B.weight".to_string();
    tensors.insert(key, Tensor::zeros([24, 8], (Kind::Float, Device::Cpu)));
    let wrong = dir.path().join("wrong.safetensors");
    let named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&named, &wrong).unwrap();
    let wan_vs = nn::VarStore::new(Device::Cpu);
    Model::from_diffusers_dir(&wan_vs, &wan_dir()).unwrap();
    let err = merge_adapter_file(&wan_vs, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("attn1.to_q") && err.contains("ranks differ"),
        "{err}"
    );
}

#[test]
fn the_closed_form_linear_layers_and_adapter_sizes_are_a_built_models() {
    use apt_mmdit::linears::{linear_layers, lora_parameter_count};
    let mut wan = ModelConfig::from_diffusers_dir(&wan_dir()).unwrap();
    if let ModelConfig::Wan(w) = &mut wan {
        w.num_layers = 3;
    }
    for cfg in [
        wan,
        ModelConfig::Mmdit(MmditConfig::preset("tiny").unwrap()),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let all = LoraConfig {
            targets: linear_layers(&cfg).into_iter().map(|l| l.0).collect(),
            ..lora()
        };
        let (_, adapted) = with_lora(&all, || Model::new(vs.root(), &cfg)).unwrap();
        let vars = vs.variables();
        let mut built: Vec<(String, usize, usize)> = adapted
            .iter()
            .map(|m| {
                let s = vars[&format!("{m}.weight")].size();
                (m.clone(), s[1] as usize, s[0] as usize)
            })
            .collect();
        built.sort();
        assert_eq!(linear_layers(&cfg), built, "{}", cfg.family());
        let adapters: i64 = vars
            .iter()
            .filter(|(k, _)| k.contains(".lora_"))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(lora_parameter_count(&cfg, &all), adapters as u64);
        // Every 2-D weight of the model is one of them (convolutions are 5-D).
        let two_d = vars
            .iter()
            .filter(|(k, t)| t.dim() == 2 && !k.contains(".lora_"))
            .count();
        assert_eq!(two_d, built.len(), "{}", cfg.family());
    }
}
