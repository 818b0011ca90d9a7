//! Caption embeddings cached on disk (one safetensors file per unique caption), so training
//! never re-encodes a caption.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{Kind, Tensor};

use super::{TextEmbedding, TextEncoder};
use crate::error::{DataError, Result};

/// FNV-1a, 64 bit: a stable file name for a caption (the caption is stored in the file too
/// and checked on load, so a collision can never return the wrong embedding).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Embeddings by caption: in memory, then on disk under `dir`, else encoded and stored.
#[derive(Debug)]
pub struct EmbeddingCache {
    dir: PathBuf,
    memory: Mutex<HashMap<String, (Tensor, Tensor)>>,
}

impl EmbeddingCache {
    /// A cache in `dir` (created when missing). Use one directory per encoder.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| DataError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            memory: Mutex::new(HashMap::new()),
        })
    }

    /// Where `caption`'s embedding lives on disk.
    pub fn path_for(&self, caption: &str) -> PathBuf {
        self.dir
            .join(format!("{:016x}.safetensors", fnv1a(caption.as_bytes())))
    }

    /// The embedding of `caption`, encoding it with `encoder` only if it is in neither cache.
    pub fn get(&self, caption: &str, encoder: &TextEncoder) -> Result<TextEmbedding> {
        self.get_with(caption, |c| encoder.encode(c))
    }

    /// The embedding of `caption`, calling `encode` only if it is in neither cache (so an
    /// encoder can be loaded lazily, only when a caption is new).
    pub fn get_with(
        &self,
        caption: &str,
        encode: impl FnOnce(&str) -> Result<TextEmbedding>,
    ) -> Result<TextEmbedding> {
        if let Some((c, p)) = self.memory.lock().expect("cache lock").get(caption) {
            return Ok(TextEmbedding {
                context: c.shallow_clone(),
                pooled: p.shallow_clone(),
            });
        }
        let path = self.path_for(caption);
        let cached = read(&path, caption).unwrap_or_else(|e| {
            // A damaged entry (a crash elsewhere, a full disk) is re-encoded and replaced.
            tracing::warn!("{e}; encoding the caption again");
            None
        });
        let embedding = match cached {
            Some(e) => e,
            None => {
                let e = encode(caption)?;
                write(&path, caption, &e)?;
                e
            }
        };
        self.memory.lock().expect("cache lock").insert(
            caption.to_string(),
            (
                embedding.context.shallow_clone(),
                embedding.pooled.shallow_clone(),
            ),
        );
        Ok(embedding)
    }

    /// Number of captions held in memory.
    pub fn len(&self) -> usize {
        self.memory.lock().expect("cache lock").len()
    }

    /// True when nothing is cached in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn read(path: &Path, caption: &str) -> Result<Option<TextEmbedding>> {
    if !path.is_file() {
        return Ok(None);
    }
    let corrupt = |why: String| DataError::Dataset {
        path: path.to_path_buf(),
        reason: format!("corrupt cached embedding ({why})"),
    };
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| corrupt(e.to_string()))?
        .into_iter()
        .collect();
    let (Some(context), Some(pooled), Some(stored)) = (
        tensors.get("context"),
        tensors.get("pooled"),
        tensors.get("caption"),
    ) else {
        return Err(corrupt("expected context, pooled and caption".into()));
    };
    let stored = Vec::<u8>::try_from(stored).map_err(|e| corrupt(e.to_string()))?;
    if stored != caption.as_bytes() {
        return Ok(None); // a hash collision: encode and overwrite
    }
    Ok(Some(TextEmbedding {
        context: context.shallow_clone(),
        pooled: pooled.shallow_clone(),
    }))
}

fn write(path: &Path, caption: &str, e: &TextEmbedding) -> Result<()> {
    let bytes = if caption.is_empty() {
        Tensor::zeros([0], (Kind::Uint8, tch::Device::Cpu))
    } else {
        Tensor::from_slice(caption.as_bytes())
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let tensors = [
        ("context", e.context.to_device(tch::Device::Cpu)),
        ("pooled", e.pooled.to_device(tch::Device::Cpu)),
        ("caption", bytes),
    ];
    let result = Tensor::write_safetensors(&tensors, &tmp)
        .map_err(|err| DataError::Dataset {
            path: tmp.clone(),
            reason: err.to_string(),
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        });
    if result.is_err() {
        // Never leave a temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
