//! Parity of a text encoder against transformers: run a transformers model directory (UMT5's
//! encoder, or BERT such as MiniLM, as its `config.json`'s `model_type` says) on a recorded
//! `input_ids` / `attention_mask` and compare with the recorded `last_hidden_state`.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{dataset_error, Umt5Encoder};
use crate::error::{DataError, Result};

/// What [`run_parity`] measured.
#[derive(Debug)]
pub struct TextParity {
    /// `model_type` of the directory (`umt5`, `bert`).
    pub model_type: String,
    /// Largest `|ours − transformers|` over the last hidden state at the tokens (padding
    /// positions, whose states nothing reads, excluded).
    pub max_abs_diff: f64,
    /// The hidden state's shape.
    pub shape: Vec<i64>,
}

/// Runs the fixture's inputs through the encoder of `dir` and compares the last hidden state.
pub fn run_parity(dir: &Path, fixture: &Path) -> Result<TextParity> {
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|source| DataError::Io {
        path: config.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| dataset_error(&config, format!("not JSON: {e}")))?;
    let model_type = json["model_type"].as_str().unwrap_or_default().to_string();
    let io: BTreeMap<String, Tensor> = Tensor::read_safetensors(fixture)
        .map_err(|e| dataset_error(fixture, format!("not a readable safetensors file: {e}")))?
        .into_iter()
        .collect();
    for key in ["input_ids", "attention_mask", "last_hidden_state"] {
        if !io.contains_key(key) {
            return Err(dataset_error(
                fixture,
                format!("missing tensor `{key}` (expected input_ids, attention_mask, last_hidden_state)"),
            ));
        }
    }
    let (ids, mask) = (
        io["input_ids"].to_kind(Kind::Int64),
        io["attention_mask"].to_kind(Kind::Int64),
    );
    let ours = match model_type.as_str() {
        "umt5" => {
            let (_vs, encoder) = Umt5Encoder::load(dir, Device::Cpu)?;
            tch::no_grad(|| encoder.forward(&ids, &mask))
        }
        "bert" => {
            let encoder = super::TextEncoder::load(dir, Device::Cpu)?;
            tch::no_grad(|| encoder.bert.forward(&ids, &mask))
        }
        other => {
            return Err(dataset_error(
                &config,
                format!(
                "model_type {other:?}: expected \"umt5\" (Wan's text encoder) or \"bert\" (MiniLM)"
            ),
            ))
        }
    };
    let expected = io["last_hidden_state"].to_kind(Kind::Float);
    if ours.size() != expected.size() {
        return Err(dataset_error(
            fixture,
            format!(
                "last_hidden_state is {:?}, the encoder gives {:?}",
                expected.size(),
                ours.size()
            ),
        ));
    }
    Ok(TextParity {
        model_type,
        max_abs_diff: ((&ours - &expected) * mask.unsqueeze(-1).to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]),
        shape: ours.size(),
    })
}
