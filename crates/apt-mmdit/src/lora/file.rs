//! Adapters on disk: diffusers' LoRA file layout (PEFT names and config), merging.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use super::{LoraConfig, TRANSFORMER_PREFIX};
use crate::error::{MmditError, Result};

/// Whether `name` is an adapter variable (`….lora_A.weight` / `….lora_B.weight`).
pub fn is_adapter_variable(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

/// The modules of `vs` with adapters: `module → (A, B)`.
fn adapters(vs: &nn::VarStore) -> BTreeMap<String, (Tensor, Tensor)> {
    let vars = vs.variables();
    vars.iter()
        .filter_map(|(k, a)| {
            let module = k.strip_suffix(".lora_A.weight")?;
            let b = vars.get(&format!("{module}.lora_B.weight"))?;
            Some((module.to_string(), (a.shallow_clone(), b.shallow_clone())))
        })
        .collect()
}

/// Writes the adapters of `vs` as a diffusers LoRA file at `path` (atomically):
/// `transformer.<module>.lora_A.weight` / `.lora_B.weight` in fp32 and PEFT's config of `cfg`
/// in the metadata. `strip` is removed from the front of each module name first (e.g.
/// `"backbone."` for a discriminator). Returns the number of adapted modules.
pub fn save_adapter_file(
    vs: &nn::VarStore,
    cfg: &LoraConfig,
    strip: &str,
    path: &Path,
) -> Result<usize> {
    let mut tensors = vec![];
    let found = adapters(vs);
    for (module, (a, b)) in &found {
        let name = module.strip_prefix(strip).unwrap_or(module);
        for (kind, t) in [("lora_A", a), ("lora_B", b)] {
            tensors.push((
                format!("{TRANSFORMER_PREFIX}{name}.{kind}.weight"),
                t.shallow_clone(),
            ));
        }
    }
    let metadata = serde_json::json!({
        "transformer.r": cfg.rank,
        "transformer.lora_alpha": cfg.alpha.unwrap_or(cfg.rank as f64),
        "transformer.lora_dropout": cfg.dropout,
        "transformer.target_modules": cfg.targets,
        "transformer.peft_type": "LORA",
        "transformer.init_lora_weights": true,
        "transformer.bias": "none",
        "transformer.use_dora": false,
        "transformer.use_rslora": false,
    });
    let text = serde_json::to_string_pretty(&metadata).expect("JSON serialises");
    crate::weights::write_atomically(path, |tmp| {
        write_f32_safetensors(
            tmp,
            &tensors,
            &[("lora_adapter_metadata", &text), ("format", "pt")],
        )
    })?;
    Ok(found.len())
}

/// A safetensors file of fp32 tensors with string metadata (tch writes none).
fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    let mut data: Vec<u8> = vec![];
    for (name, t) in tensors {
        let t = t
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).map_err(MmditError::from)?;
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.size(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&header).expect("JSON serialises");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head);
    bytes.extend(data);
    std::fs::write(path, bytes).map_err(|source| MmditError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The scale `lora_alpha / r` of a LoRA file, from diffusers' `lora_adapter_metadata` in its
/// safetensors header (1 without it).
fn file_scale(path: &Path) -> Result<f64> {
    let bad = |message: String| MmditError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| MmditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("shorter than a safetensors header".into()))?;
    let header: serde_json::Value = bytes
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or_else(|| bad("no readable safetensors header".into()))?;
    let Some(text) = header["__metadata__"]["lora_adapter_metadata"].as_str() else {
        return Ok(1.0);
    };
    let meta: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("lora_adapter_metadata is not JSON: {e}")))?;
    let field = |k: &str| {
        meta.get(format!("{TRANSFORMER_PREFIX}{k}"))
            .or_else(|| meta.get(k))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if field(pattern).as_object().is_some_and(|o| !o.is_empty()) {
            return Err(bad(format!(
                "per-module `{pattern}` is not supported (one rank and alpha for every module)"
            )));
        }
    }
    match (field("lora_alpha").as_f64(), field("r").as_f64()) {
        (Some(alpha), Some(r)) if r > 0.0 => Ok(alpha / r),
        _ => Ok(1.0),
    }
}

/// The weights of `vs` with every adapter merged: `W + s·B·A` under `<module>.weight`, the
/// adapter variables left out (a full model's weights, what a model without adapters loads).
pub fn merged_weights(vs: &nn::VarStore, scale: f64) -> Vec<(String, Tensor)> {
    let merged = adapters(vs);
    let mut out: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| !is_adapter_variable(k))
        .map(|(k, w)| {
            let w = w.detach();
            let module = k.strip_suffix(".weight").unwrap_or("");
            match merged.get(module) {
                Some((a, b)) => {
                    let delta = b
                        .to_kind(tch::Kind::Float)
                        .matmul(&a.to_kind(tch::Kind::Float));
                    let full = w.to_kind(tch::Kind::Float) + delta * scale;
                    (k, full.to_kind(w.kind()))
                }
                None => (k, w),
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Merges a diffusers LoRA file (`transformer.<module>.lora_A.weight` / `.lora_B.weight`, its
/// scale `lora_alpha / r` from the metadata) into the full model `vs`: `W += s·B·A`. Every
/// pair must name a linear weight of `vs` with matching shapes; other keys are an error.
/// Returns the number of merged modules.
pub fn merge_adapter_file(vs: &nn::VarStore, path: &Path) -> Result<usize> {
    let bad = |message: String| MmditError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?
        .into_iter()
        .collect();
    let vars = vs.variables();
    let mut pairs = vec![];
    for (key, a) in &tensors {
        let Some(module) = key
            .strip_prefix(TRANSFORMER_PREFIX)
            .and_then(|k| k.strip_suffix(".lora_A.weight"))
        else {
            if !key.ends_with(".lora_B.weight") {
                return Err(bad(format!(
                    "`{key}` is not a LoRA key (expected transformer.<module>.lora_A.weight / \
                     .lora_B.weight)"
                )));
            }
            continue;
        };
        let b_key = format!("{TRANSFORMER_PREFIX}{module}.lora_B.weight");
        let b = tensors
            .get(&b_key)
            .ok_or_else(|| bad(format!("`{key}` has no `{b_key}`")))?;
        let w = vars.get(&format!("{module}.weight")).ok_or_else(|| {
            bad(format!(
                "`{key}`: the model has no linear layer `{module}` (an adapter of another model)"
            ))
        })?;
        let (out, inp) = (w.size()[0], w.size()[1]);
        let (ar, ai) = (a.size()[0], a.size()[1]);
        let (bo, br) = (b.size()[0], b.size()[1]);
        if ai != inp || bo != out || ar != br {
            return Err(bad(format!(
                "`{module}`: A {:?} and B {:?} do not fit the weight {:?} (or their ranks differ)",
                a.size(),
                b.size(),
                w.size()
            )));
        }
        pairs.push((module.to_string(), a.shallow_clone(), b.shallow_clone()));
    }
    let orphan = tensors.keys().find(|k| {
        k.strip_suffix(".lora_B.weight")
            .is_some_and(|m| !tensors.contains_key(&format!("{m}.lora_A.weight")))
    });
    if let Some(k) = orphan {
        return Err(bad(format!("`{k}` has no matching lora_A")));
    }
    if pairs.is_empty() {
        return Err(bad("holds no LoRA adapter".into()));
    }
    let scale = file_scale(path)?;
    tch::no_grad(|| {
        for (module, a, b) in &pairs {
            let mut w = vars[&format!("{module}.weight")].shallow_clone();
            let delta = b
                .to_kind(tch::Kind::Float)
                .matmul(&a.to_kind(tch::Kind::Float))
                * scale;
            let merged =
                (w.to_kind(tch::Kind::Float) + delta.to_device(w.device())).to_kind(w.kind());
            w.copy_(&merged);
        }
    });
    Ok(pairs.len())
}
