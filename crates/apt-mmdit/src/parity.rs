//! Parity against diffusers: run a `save_pretrained` directory (SD3 or Wan 2.1) on a recorded
//! input and compare with the recorded output (what the parity tests do).

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{MmditError, Result};
use crate::model::Mmdit;
use crate::wan::{WanTransformer, WAN_CLASS_NAME};

/// The tensors of an SD3 parity fixture, named after diffusers' forward arguments.
pub const FIXTURE_INPUTS: [&str; 4] = [
    "hidden_states",
    "encoder_hidden_states",
    "pooled_projections",
    "timestep",
];
/// The tensors of a Wan parity fixture.
pub const WAN_FIXTURE_INPUTS: [&str; 3] = ["hidden_states", "encoder_hidden_states", "timestep"];
/// The expected output's name in a parity fixture.
pub const FIXTURE_OUTPUT: &str = "sample";

/// Outcome of [`run_parity`].
#[derive(Debug)]
pub struct ParityReport {
    /// Largest `|ours - diffusers|` over the output.
    pub max_abs_diff: f64,
    /// Largest `|diffusers|`, for scale.
    pub max_abs_expected: f64,
    /// Output shape.
    pub shape: Vec<i64>,
    /// Number of model parameters loaded.
    pub parameters: i64,
}

/// Reads an SD3 fixture file into a name → tensor map, checking that the inputs and the output
/// exist.
pub fn read_fixture(path: &Path) -> Result<HashMap<String, Tensor>> {
    read_fixture_with(path, &FIXTURE_INPUTS)
}

/// Reads a fixture file holding `inputs` and the output.
fn read_fixture_with(path: &Path, inputs: &[&str]) -> Result<HashMap<String, Tensor>> {
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| MmditError::Parse {
            path: path.to_path_buf(),
            message: format!("not a readable safetensors file: {e}"),
        })?
        .into_iter()
        .collect();
    for key in inputs.iter().chain(std::iter::once(&FIXTURE_OUTPUT)) {
        if !tensors.contains_key(*key) {
            let mut have: Vec<&String> = tensors.keys().collect();
            have.sort();
            return Err(MmditError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "missing tensor `{key}` (expected {} and `{FIXTURE_OUTPUT}`; found {have:?})",
                    inputs
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(tensors)
}

/// Loads the diffusers directory `dir` into an f32 CPU model — an `SD3Transformer2DModel`
/// ([`Mmdit`]) or a `WanTransformer3DModel` ([`WanTransformer`]), as its `config.json`'s
/// `_class_name` says — runs the fixture's inputs through its diffusers-scaled forward and
/// compares with the fixture's `sample`.
pub fn run_parity(dir: &Path, fixture: &Path) -> Result<ParityReport> {
    let vs = nn::VarStore::new(Device::Cpu);
    let wan = diffusers_class(dir)?.as_deref() == Some(WAN_CLASS_NAME);
    let inputs: &[&str] = if wan {
        &WAN_FIXTURE_INPUTS
    } else {
        &FIXTURE_INPUTS
    };
    let io = read_fixture_with(fixture, inputs)?;
    let f32 = |k: &str| io[k].to_kind(Kind::Float);
    let out = if wan {
        let model = WanTransformer::from_diffusers_dir(&vs, dir)?;
        tch::no_grad(|| {
            model.forward_diffusers(
                &f32("hidden_states"),
                &f32("timestep"),
                &f32("encoder_hidden_states"),
            )
        })?
    } else {
        let model = Mmdit::from_diffusers_dir(&vs, dir)?;
        tch::no_grad(|| {
            model.forward_diffusers(
                &f32("hidden_states"),
                &f32("encoder_hidden_states"),
                &f32("pooled_projections"),
                &f32("timestep"),
            )
        })?
    };
    let expected = f32(FIXTURE_OUTPUT);
    if out.size() != expected.size() {
        return Err(MmditError::Input {
            argument: "sample",
            expected: format!("the model's output shape {:?}", out.size()),
            got: expected.size(),
        });
    }
    Ok(ParityReport {
        max_abs_diff: (&out - &expected).abs().max().double_value(&[]),
        max_abs_expected: expected.abs().max().double_value(&[]),
        shape: out.size(),
        parameters: vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum(),
    })
}

/// The `_class_name` of `dir/config.json`, if it has one.
pub(crate) fn diffusers_class(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| MmditError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| MmditError::Parse {
        path,
        message: format!("not JSON: {e}"),
    })?;
    Ok(json["_class_name"].as_str().map(str::to_string))
}
