//! Sharded checkpoints (`shard = "gradients" | "full"`): every rank writes its pieces of the
//! sharded parts — master weights, EMA, optimizer slots — to its own file
//! (`step-N.shard-R-of-W.safetensors`, atomically), rank 0 writes everything else and the
//! manifest, which records every shard file's size and hash and how the pieces tile each
//! variable. No rank ever holds the whole state to write it.
//!
//! Reading puts the pieces back together into whole tensors under the usual names (`<part>.`,
//! `ema.<part>.`, `optimizer.<part>.<slot>.`), so a sharded checkpoint resumes at any world
//! size and in any shard mode, sharded or not. A missing, truncated or foreign shard file is an
//! error naming it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checkpoint::fingerprint;
use crate::error::{FlowError, Result};

/// One unit of a sharded part: its variables (name, shape) in order, elements, and where
/// every rank's piece of it sits in that rank's buffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitLayout {
    /// `(name, shape)` in layout order.
    pub entries: Vec<(String, Vec<i64>)>,
    /// Elements (before padding).
    pub numel: i64,
    /// Elements per rank.
    pub piece: i64,
    /// Offset of the piece in a rank's buffers.
    pub local: i64,
}

/// A sharded part in a checkpoint: its units, and which buffers its shard files hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartLayout {
    /// The units, in buffer order.
    pub units: Vec<UnitLayout>,
    /// Whether `ema.<part>` pieces are present.
    pub ema: bool,
    /// The optimizer slots with pieces (`optimizer.<part>.<slot>`).
    pub slots: Vec<String>,
}

/// One rank's shard file, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFile {
    /// File name, next to the manifest.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// FNV-1a 64 (hex).
    pub fnv64: String,
}

/// What a manifest says about the shard files of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Ranks that wrote it (one file each, rank order).
    pub world: usize,
    /// The files.
    pub files: Vec<ShardFile>,
    /// The sharded parts, by name.
    pub parts: BTreeMap<String, PartLayout>,
}

/// The shard file name of `rank` of `world` at checkpoint `name` (`step-…`).
pub fn shard_file_name(name: &str, rank: usize, world: usize) -> String {
    format!("{name}.shard-{rank}-of-{world}.safetensors")
}

/// Writes this rank's `tensors` (its pieces, named `<part>.master`, `ema.<part>`,
/// `optimizer.<part>.<slot>`) atomically into `dir`; returns the record of the file.
pub fn write_shard(
    dir: &Path,
    name: &str,
    rank: usize,
    world: usize,
    tensors: &[(String, Tensor)],
) -> Result<ShardFile> {
    fs::create_dir_all(dir).map_err(|source| FlowError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let file = shard_file_name(name, rank, world);
    let path = dir.join(&file);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    apt_mmdit::weights::write_atomically(&path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).map_err(apt_mmdit::MmditError::from)
    })?;
    let (bytes, fnv64) = fingerprint(&path)?;
    Ok(ShardFile {
        name: file,
        bytes,
        fnv64,
    })
}

impl ShardRecord {
    /// Reads every shard file next to `manifest` (checking size and hash) and appends the
    /// whole tensors they tile to `tensors`, under the usual checkpoint names.
    pub fn restore(&self, manifest: &Path, tensors: &mut Vec<(String, Tensor)>) -> Result<()> {
        if self.files.len() != self.world {
            return Err(FlowError::File {
                path: manifest.to_path_buf(),
                reason: format!(
                    "lists {} shard files for {} ranks",
                    self.files.len(),
                    self.world
                ),
            });
        }
        let mut shards: Vec<BTreeMap<String, Tensor>> = Vec::with_capacity(self.world);
        for file in &self.files {
            let path = manifest.with_file_name(&file.name);
            if !path.is_file() {
                return Err(FlowError::File {
                    path,
                    reason: "missing: every rank's shard file must sit next to the manifest".into(),
                });
            }
            let (bytes, hash) = fingerprint(&path)?;
            if bytes != file.bytes || hash != file.fnv64 {
                return Err(FlowError::File {
                    path,
                    reason: format!(
                        "truncated, corrupted or from another checkpoint: {bytes} bytes, hash \
                         {hash}; the manifest says {} bytes, hash {}",
                        file.bytes, file.fnv64
                    ),
                });
            }
            let read = Tensor::read_safetensors(&path).map_err(|e| FlowError::File {
                path: path.clone(),
                reason: format!("unreadable: {e}"),
            })?;
            shards.push(read.into_iter().collect());
        }
        for (part, layout) in &self.parts {
            let mut buffers = vec![(format!("{part}.master"), part.clone())];
            if layout.ema {
                buffers.push((format!("ema.{part}"), format!("ema.{part}")));
            }
            for slot in &layout.slots {
                let key = format!("optimizer.{part}.{slot}");
                buffers.push((key.clone(), key));
            }
            for (key, prefix) in buffers {
                let locals = shards
                    .iter()
                    .zip(&self.files)
                    .map(|(s, f)| {
                        s.get(&key).ok_or_else(|| FlowError::File {
                            path: manifest.with_file_name(&f.name),
                            reason: format!("holds no `{key}`"),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                tensors.extend(whole_tensors(&locals, &layout.units, &prefix)?);
            }
        }
        Ok(())
    }
}

/// The whole `<prefix>.<variable>` tensors that every rank's `locals` (laid out by `units`)
/// tile.
fn whole_tensors(
    locals: &[&Tensor],
    units: &[UnitLayout],
    prefix: &str,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for unit in units {
        let pieces: Vec<Tensor> = locals
            .iter()
            .map(|t| {
                if t.numel() as i64 >= unit.local + unit.piece {
                    Ok(t.narrow(0, unit.local, unit.piece))
                } else {
                    Err(FlowError::Collective(format!(
                        "`{prefix}`: a shard holds {} elements, the layout needs {}",
                        t.numel(),
                        unit.local + unit.piece
                    )))
                }
            })
            .collect::<Result<_>>()?;
        let joined = Tensor::cat(&pieces, 0);
        let mut offset = 0;
        for (name, shape) in &unit.entries {
            let n: i64 = shape.iter().product();
            out.push((
                format!("{prefix}.{name}"),
                joined.narrow(0, offset, n).view(shape.as_slice()).copy(),
            ));
            offset += n;
        }
    }
    Ok(out)
}
