//! Weights on disk: safetensors with diffusers' key names, strict loading, atomic saving, and
//! diffusers `save_pretrained` directories (single file or sharded).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use tch::{nn, Tensor};

use crate::config::MmditConfig;
use crate::error::{MmditError, Result};
use crate::model::Mmdit;

/// diffusers' weights file name inside a `save_pretrained` directory.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// diffusers' index file for sharded weights.
pub const DIFFUSERS_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MmditError + '_ {
    move |source| MmditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes every variable of `vs` (trainable or not) to `path` as safetensors, atomically: the
/// data goes to a temporary file in the same directory, is flushed to disk, then renamed over
/// `path`. A crash leaves either the old file or the new one, never a partial file.
pub fn save_safetensors(vs: &nn::VarStore, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let named: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(k, t)| (k, t.detach().contiguous()))
        .collect();
    write_atomically(path, |tmp| {
        Tensor::write_safetensors(&named, tmp).map_err(MmditError::from)
    })
}

/// Runs `write` on a temporary sibling of `path`, fsyncs it, renames it to `path` and fsyncs
/// the directory.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_error(path))?;
        // Persist the rename itself.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&dir))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `vs` as a diffusers `save_pretrained` directory: `config.json` (`config_json`) and
/// the weights as `diffusion_pytorch_model.safetensors`, or — when they exceed
/// `max_shard_bytes` — as `diffusion_pytorch_model-0000K-of-0000N.safetensors` shards (whole
/// tensors, in name order) with diffusers' index. Every file is written atomically, the config
/// last; weights of an earlier save that this one does not use are removed after it.
pub fn save_diffusers_dir(
    vs: &nn::VarStore,
    config_json: &str,
    dir: &Path,
    max_shard_bytes: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (name, t) in named {
        let b = bytes(&t);
        if size > 0 && size + b > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().expect("one shard").push((name, t));
    }
    let write = |path: &Path, tensors: &[(String, Tensor)]| {
        write_atomically(path, |tmp| {
            Tensor::write_safetensors(tensors, tmp).map_err(MmditError::from)
        })
    };
    let mut written = vec![];
    if shards.len() == 1 {
        write(&dir.join(DIFFUSERS_WEIGHTS), &shards[0])?;
        written.push(DIFFUSERS_WEIGHTS.to_string());
    } else {
        let n = shards.len();
        let mut map = serde_json::Map::new();
        let mut total = 0u64;
        for (k, shard) in shards.iter().enumerate() {
            let file = format!("diffusion_pytorch_model-{:05}-of-{n:05}.safetensors", k + 1);
            write(&dir.join(&file), shard)?;
            written.push(file.clone());
            for (name, t) in shard {
                total += bytes(t);
                map.insert(name.clone(), file.clone().into());
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
        let text = serde_json::to_string_pretty(&index).expect("JSON serialises");
        write_atomically(&dir.join(DIFFUSERS_INDEX), |tmp| {
            std::fs::write(tmp, text).map_err(io_error(tmp))
        })?;
        written.push(DIFFUSERS_INDEX.to_string());
    }
    write_atomically(&dir.join("config.json"), |tmp| {
        std::fs::write(tmp, config_json).map_err(io_error(tmp))
    })?;
    // Weights of an earlier save in another layout go last (until now they were intact).
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("diffusion_pytorch_model") && !written.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    Ok(())
}

/// Loads `files` into `vs` strictly: every variable must be present with the same shape and
/// no tensor may be left over; otherwise nothing is changed and the error lists the missing,
/// unexpected and mis-shaped keys. Tensors are converted to each variable's dtype and device
/// (the model's dtype is kept). `label` names the source in errors.
pub fn load_strict(vs: &nn::VarStore, files: &[PathBuf], label: &Path) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for file in files {
        let read = Tensor::read_safetensors(file).map_err(|e| MmditError::Parse {
            path: file.clone(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        tensors.extend(read);
    }
    load_tensors_strict(vs, &tensors, label)
}

/// [`load_strict`] from tensors already in memory (e.g. the `model.*` part of a training
/// checkpoint, prefix removed). `label` names the source in errors.
pub fn load_tensors_strict(
    vs: &nn::VarStore,
    tensors: &BTreeMap<String, Tensor>,
    label: &Path,
) -> Result<()> {
    let vars = vs.variables();
    let var_keys: BTreeSet<&String> = vars.keys().collect();
    let file_keys: BTreeSet<&String> = tensors.keys().collect();
    let missing: Vec<String> = var_keys
        .difference(&file_keys)
        .map(|k| k.to_string())
        .collect();
    let unexpected: Vec<String> = file_keys
        .difference(&var_keys)
        .map(|k| k.to_string())
        .collect();
    let mut mismatched: Vec<String> = vars
        .iter()
        .filter_map(|(k, v)| {
            let t = tensors.get(k)?;
            if t.size() != v.size() {
                Some(format!("{k}: file {:?} vs model {:?}", t.size(), v.size()))
            } else if !t.is_floating_point() && v.is_floating_point() {
                Some(format!(
                    "{k}: file dtype {:?}, expected floating point",
                    t.kind()
                ))
            } else {
                None
            }
        })
        .collect();
    mismatched.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        return Err(MmditError::Weights {
            path: label.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        });
    }
    tch::no_grad(|| {
        for (k, mut v) in vars {
            let t = &tensors[&k];
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(())
}

/// [`load_strict`] from one safetensors file.
pub fn load_safetensors(vs: &nn::VarStore, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(MmditError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        });
    }
    load_strict(vs, &[path.to_path_buf()], path)
}

/// The weight files of a diffusers directory: the single file, or the shards named by the
/// index.
pub fn diffusers_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(DIFFUSERS_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(DIFFUSERS_INDEX);
    let text = std::fs::read_to_string(&index).map_err(|_| MmditError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {DIFFUSERS_WEIGHTS} or {DIFFUSERS_INDEX} (expected a diffusers save_pretrained directory)"),
        ),
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| MmditError::Parse {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| MmditError::Parse {
            path: index.clone(),
            message: "expected a `weight_map` object".into(),
        })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(MmditError::Io {
            path: missing.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("a shard {} names is missing", index.display()),
            ),
        });
    }
    Ok(files)
}

/// Reads `config.json` of a diffusers `SD3Transformer2DModel` directory.
pub fn read_diffusers_config(dir: &Path) -> Result<MmditConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    MmditConfig::from_diffusers_json(&text).map_err(|e| MmditError::Parse {
        path,
        message: e.to_string(),
    })
}

impl Mmdit {
    /// Builds a model from a diffusers `SD3Transformer2DModel` `save_pretrained` directory
    /// (`config.json` + `diffusion_pytorch_model.safetensors`, or sharded), loading the
    /// weights strictly into `vs` (which must be empty).
    pub fn from_diffusers_dir(vs: &nn::VarStore, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = read_diffusers_config(dir)?;
        let model = Mmdit::new(vs.root(), &cfg)?;
        load_strict(vs, &diffusers_weight_files(dir)?, dir)?;
        Ok(model)
    }
}
