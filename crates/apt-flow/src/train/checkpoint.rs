//! Training checkpoints: models + EMAs + optimizer states (one safetensors file, each part's
//! tensors under its own prefix: `<part>.`, `ema.<part>.`, `optimizer.<part>.`, with parts
//! `model` for a flow stage and `generator` + `discriminator` for adversarial training) and a
//! JSON manifest (step, optimizer configs and steps, RNG state, data cursor, non-finite
//! counters, the weights file's size and hash).
//!
//! Writes are atomic (temporary file, fsync, rename) and ordered weights → manifest → `latest`
//! pointer, so a crash at any moment leaves the previous checkpoint complete and referenced.
//! Loading verifies size and hash and falls back to the newest checkpoint that is intact.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub use super::checkpoint_shards::ShardRecord;
use super::ema::Ema;
use super::guard::NonFiniteGuard;
use super::optim::{Optimizer, OptimizerConfig};
use crate::data::Cursor;
use crate::error::{FlowError, Result};
use crate::rng::TensorRng;

/// The manifest format tag (v2: per-part prefixes `ema.<part>.` and `optimizer.<part>.`).
pub const FORMAT: &str = "apt-rs checkpoint v2";
/// The tag of a checkpoint with per-rank shard files (v3: v2 plus `shards`).
pub const FORMAT_SHARDED: &str = "apt-rs checkpoint v3";
/// The pointer file naming the newest complete manifest.
pub const LATEST: &str = "latest";

/// What a checkpoint says about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    /// [`FORMAT`].
    pub format: String,
    /// The label of the run that wrote it ([`Trainer::stage`](super::Trainer::stage)).
    pub stage: String,
    /// Completed optimizer steps of the run.
    pub step: u64,
    /// Weights file name (next to the manifest).
    pub weights: String,
    /// Its size in bytes.
    pub weights_bytes: u64,
    /// Its FNV-1a 64 hash (hex).
    pub weights_fnv64: String,
    /// Every optimizer's configuration and update count, by prefix (the part's name).
    pub optimizers: BTreeMap<String, (OptimizerConfig, u64)>,
    /// The training random stream.
    pub rng: Option<TensorRng>,
    /// The data loader's position.
    pub cursor: Option<Cursor>,
    /// Non-finite step counters.
    pub guard: NonFiniteGuard,
    /// Stage-specific values (losses, configs, …).
    pub extra: serde_json::Value,
    /// The per-rank shard files of sharded parts (v3), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardRecord>,
}

/// Everything a checkpoint holds, borrowed from the trainer.
#[derive(Debug)]
pub struct TrainState<'a> {
    /// The run's label ([`Trainer::stage`](super::Trainer::stage)).
    pub stage: &'a str,
    /// Completed steps.
    pub step: u64,
    /// Model weights by variable name (fp32: a part's master weights), each under its prefix.
    pub models: Vec<(String, Vec<(String, Tensor)>)>,
    /// EMA weights, each under its prefix.
    pub emas: Vec<(String, &'a Ema)>,
    /// Optimizers, each under its prefix.
    pub optimizers: Vec<(String, &'a Optimizer)>,
    /// Random stream.
    pub rng: Option<&'a TensorRng>,
    /// Data cursor.
    pub cursor: Option<Cursor>,
    /// Non-finite counters.
    pub guard: &'a NonFiniteGuard,
    /// Anything else worth keeping.
    pub extra: serde_json::Value,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its manifest.
    pub manifest: CheckpointManifest,
    /// Where the manifest is.
    pub path: PathBuf,
    /// All tensors, prefixed.
    pub tensors: Vec<(String, Tensor)>,
}

/// The size and FNV-1a 64 hash (hex) of a file: what manifests record to detect truncated or
/// corrupted weights.
pub fn fingerprint(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).map_err(|source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok((bytes.len() as u64, format!("{hash:016x}")))
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    apt_mmdit::weights::write_atomically(path, |tmp| {
        fs::write(tmp, bytes).map_err(|source| apt_mmdit::MmditError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

/// The file stem of the checkpoint after `step` updates (`step-000000042`).
pub fn step_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Writes a checkpoint for `state` into `dir`, then keeps only the newest `keep_last`.
/// Returns the manifest's path.
pub fn save(dir: &Path, state: &TrainState, keep_last: usize) -> Result<PathBuf> {
    save_with_shards(dir, state, keep_last, None)
}

/// [`save`] for a run whose ranks already wrote their shard files (`shards` records them;
/// see [`super::checkpoint_shards`]).
pub fn save_with_shards(
    dir: &Path,
    state: &TrainState,
    keep_last: usize,
    shards: Option<ShardRecord>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|source| FlowError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = step_name(state.step);
    let weights = dir.join(format!("{name}.safetensors"));
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (prefix, weights) in &state.models {
        tensors.extend(
            weights
                .iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v.detach())),
        );
    }
    for (prefix, ema) in &state.emas {
        tensors.extend(ema.state_tensors(prefix));
    }
    for (prefix, opt) in &state.optimizers {
        tensors.extend(opt.state_tensors(prefix));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    apt_mmdit::weights::write_atomically(&weights, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(apt_mmdit::MmditError::from)
    })?;
    let (bytes, hash) = fingerprint(&weights)?;
    let manifest = CheckpointManifest {
        format: if shards.is_some() {
            FORMAT_SHARDED
        } else {
            FORMAT
        }
        .into(),
        stage: state.stage.into(),
        step: state.step,
        weights: format!("{name}.safetensors"),
        weights_bytes: bytes,
        weights_fnv64: hash,
        optimizers: state
            .optimizers
            .iter()
            .map(|(p, o)| (p.to_string(), (*o.config(), o.steps_taken())))
            .collect(),
        rng: state.rng.cloned(),
        cursor: state.cursor,
        guard: state.guard.clone(),
        extra: state.extra.clone(),
        shards,
    };
    let manifest_path = dir.join(format!("{name}.json"));
    atomic_write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)
            .expect("serialisable")
            .as_bytes(),
    )?;
    atomic_write(&dir.join(LATEST), format!("{name}.json\n").as_bytes())?;
    prune(dir, keep_last.max(1))?;
    Ok(manifest_path)
}

/// Manifests in `dir`, newest (highest step) first.
pub fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.extension().is_some_and(|e| e == "json")
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
    });
    found.sort();
    found.reverse();
    found
}

/// Keeps the newest `keep` checkpoints: removes older manifests with their weights and shard
/// files, and shard files no kept manifest names (left by a crash mid-checkpoint).
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = manifests(dir);
    for old in all.iter().skip(keep) {
        let _ = fs::remove_file(old.with_extension("safetensors"));
        let _ = fs::remove_file(old);
    }
    let kept: Vec<String> = all
        .iter()
        .take(keep)
        .filter_map(|m| Some(m.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    let entries = fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>());
    for entry in entries.unwrap_or_default() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((step, _)) = name.split_once(".shard-") {
            if !kept.iter().any(|k| k == step) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Reads and verifies one checkpoint (size and hash of the weights, every tensor readable).
pub fn load(manifest_path: &Path) -> Result<LoadedCheckpoint> {
    let bad = |reason: String| FlowError::File {
        path: manifest_path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(manifest_path).map_err(|source| FlowError::Io {
        path: manifest_path.to_path_buf(),
        source,
    })?;
    let manifest: CheckpointManifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a checkpoint manifest: {e}")))?;
    let sharded = manifest.format == FORMAT_SHARDED && manifest.shards.is_some();
    if manifest.format != FORMAT && !sharded {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?} or {FORMAT_SHARDED:?} with shard files",
            manifest.format
        )));
    }
    let weights = manifest_path.with_file_name(&manifest.weights);
    let (bytes, hash) = fingerprint(&weights)?;
    if bytes != manifest.weights_bytes || hash != manifest.weights_fnv64 {
        return Err(FlowError::File {
            path: weights,
            reason: format!("truncated or corrupted: {bytes} bytes, hash {hash}; the manifest says {} bytes, hash {}", manifest.weights_bytes, manifest.weights_fnv64),
        });
    }
    let mut tensors = Tensor::read_safetensors(&weights).map_err(|e| FlowError::File {
        path: weights.clone(),
        reason: format!("unreadable: {e}"),
    })?;
    if let Some(shards) = &manifest.shards {
        shards.restore(manifest_path, &mut tensors)?;
    }
    Ok(LoadedCheckpoint {
        manifest,
        path: manifest_path.to_path_buf(),
        tensors,
    })
}

/// The newest intact checkpoint in `dir` (the `latest` pointer first, then older manifests),
/// with a message for every newer one that was rejected. `None` when there is none at all.
pub fn load_latest(dir: &Path) -> Result<Option<(LoadedCheckpoint, Vec<String>)>> {
    let mut candidates = Vec::new();
    if let Ok(name) = fs::read_to_string(dir.join(LATEST)) {
        candidates.push(dir.join(name.trim()));
    }
    candidates.extend(manifests(dir));
    candidates.dedup();
    let mut rejected = Vec::new();
    for path in candidates {
        match load(&path) {
            Ok(loaded) => return Ok(Some((loaded, rejected))),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    if rejected.is_empty() {
        Ok(None)
    } else {
        Err(FlowError::File {
            path: dir.to_path_buf(),
            reason: format!("no intact checkpoint: {}", rejected.join("; ")),
        })
    }
}

impl LoadedCheckpoint {
    /// The tensors under `prefix.` with the prefix removed.
    pub fn part(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix(&p)?.to_string(), t.shallow_clone())))
            .collect()
    }

    /// Loads the `model.*` weights into `vs` strictly.
    pub fn restore_model(&self, vs: &nn::VarStore) -> Result<()> {
        self.restore_weights("model", vs)
    }

    /// Loads the `<prefix>.*` weights into `vs` strictly.
    pub fn restore_weights(&self, prefix: &str, vs: &nn::VarStore) -> Result<()> {
        apt_mmdit::weights::load_tensors_strict(vs, &self.part(prefix), &self.path)?;
        Ok(())
    }

    /// Restores the optimizer saved under `prefix` (its state and update count).
    pub fn restore_optimizer(
        &self,
        prefix: &str,
        optimizer: &mut Optimizer,
        vs: &nn::VarStore,
    ) -> Result<()> {
        let steps = self
            .manifest
            .optimizers
            .get(prefix)
            .map(|(_, s)| *s)
            .unwrap_or(0);
        optimizer.load_state(&self.tensors, prefix, steps, vs)
    }
}
