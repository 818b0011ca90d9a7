//! Parity against diffusers: run a `save_pretrained` VAE directory on a recorded input and
//! compare with the recorded posterior mean and decoding (what `apt vae parity` and the parity
//! tests do).

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{Result, VaeError};
use crate::image_vae::ImageVae;
use crate::tiling::Tiling;
use crate::wan::WanVae;
use crate::weights::{class_of, IMAGE_CLASS, WAN_CLASS};

/// The tensors every fixture holds: the input, the encoder's posterior mean (unnormalised) and
/// the decoder's output for that mean.
pub const FIXTURE_KEYS: [&str; 3] = ["sample", "latent_mean", "decoded"];

/// Outcome of [`run_parity`].
#[derive(Debug)]
pub struct ParityReport {
    /// diffusers class that was compared.
    pub class: String,
    /// Largest `|ours − diffusers|` over the posterior mean.
    pub encode_max_abs_diff: f64,
    /// Largest `|ours − diffusers|` over the decoding.
    pub decode_max_abs_diff: f64,
    /// Latent shape.
    pub latent_shape: Vec<i64>,
    /// Decoded shape.
    pub decoded_shape: Vec<i64>,
    /// Whether the fixture asked for tiled decoding.
    pub tiled: bool,
    /// Number of parameters loaded.
    pub parameters: i64,
}

impl ParityReport {
    /// The larger of the two differences.
    pub fn max_abs_diff(&self) -> f64 {
        self.encode_max_abs_diff.max(self.decode_max_abs_diff)
    }
}

/// Reads a fixture, checking the three tensors exist.
pub fn read_fixture(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| VaeError::Parse {
            path: path.to_path_buf(),
            message: format!("not a readable safetensors file: {e}"),
        })?
        .into_iter()
        .collect();
    for key in FIXTURE_KEYS {
        if !tensors.contains_key(key) {
            let mut have: Vec<&String> = tensors.keys().collect();
            have.sort();
            return Err(VaeError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "missing tensor `{key}` (expected `sample`, `latent_mean`, `decoded`; found {have:?})"
                ),
            });
        }
    }
    Ok(tensors)
}

fn pair(io: &HashMap<String, Tensor>, key: &str, path: &Path) -> Result<Option<[i64; 2]>> {
    let Some(t) = io.get(key) else {
        return Ok(None);
    };
    let v: Vec<i64> = Vec::<i64>::try_from(&t.to_kind(Kind::Int64).flatten(0, -1))?;
    match v[..] {
        [h, w] if h > 0 && w > 0 => Ok(Some([h, w])),
        _ => Err(VaeError::Parse {
            path: path.to_path_buf(),
            message: format!("`{key}` must hold two positive integers [h, w] (got {v:?})"),
        }),
    }
}

fn compare(ours: &Tensor, expected: &Tensor, what: &str, fixture: &Path) -> Result<f64> {
    if ours.size() != expected.size() {
        return Err(VaeError::Parse {
            path: fixture.to_path_buf(),
            message: format!(
                "our {what} has shape {:?} but the fixture's has {:?}",
                ours.size(),
                expected.size()
            ),
        });
    }
    Ok((ours - expected).abs().max().double_value(&[]))
}

/// Loads the diffusers directory `dir` (an `AutoencoderKLWan` or `AutoencoderKL`, told apart
/// by `config.json`) into an fp32 CPU model, encodes the fixture's `sample`, decodes its
/// `latent_mean` (tiled when the fixture holds `tile_sample_min` and `tile_sample_stride`) and
/// compares both with the fixture.
pub fn run_parity(dir: &Path, fixture: &Path) -> Result<ParityReport> {
    let class = class_of(dir)?;
    let io = read_fixture(fixture)?;
    let f32 = |k: &str| io[k].to_kind(Kind::Float);
    let tiling = match (
        pair(&io, "tile_sample_min", fixture)?,
        pair(&io, "tile_sample_stride", fixture)?,
    ) {
        (Some(tile), Some(stride)) => Some(Tiling { tile, stride }),
        _ => None,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let (mean, decoded) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        match class.as_str() {
            WAN_CLASS => {
                let vae = WanVae::from_diffusers_dir(&vs, dir)?;
                let mean = vae.encode(&f32("sample"))?.mean;
                Ok((mean, vae.decode_with(&f32("latent_mean"), tiling.as_ref())?))
            }
            IMAGE_CLASS => {
                if tiling.is_some() {
                    return Err(VaeError::Parse {
                        path: fixture.to_path_buf(),
                        message: "tiled decoding is only implemented for AutoencoderKLWan".into(),
                    });
                }
                let vae = ImageVae::from_diffusers_dir(&vs, dir)?;
                let mean = vae.encode(&f32("sample"))?.mean;
                Ok((mean, vae.decode(&f32("latent_mean"))?))
            }
            other => Err(VaeError::Parse {
                path: dir.join("config.json"),
                message: format!(
                    "`_class_name` {other:?} is not a supported VAE (expected {WAN_CLASS:?} or {IMAGE_CLASS:?})"
                ),
            }),
        }
    })?;
    Ok(ParityReport {
        class,
        encode_max_abs_diff: compare(&mean, &f32("latent_mean"), "posterior mean", fixture)?,
        decode_max_abs_diff: compare(&decoded, &f32("decoded"), "decoding", fixture)?,
        latent_shape: mean.size(),
        decoded_shape: decoded.size(),
        tiled: tiling.is_some(),
        parameters: vs.variables().values().map(|t| t.numel() as i64).sum(),
    })
}
