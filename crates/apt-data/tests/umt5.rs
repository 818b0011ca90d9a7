//! Wan 2.1's text encoder against transformers (fixture made by scripts/make_umt5_fixture.py
//! with transformers 5.24.0): a random UMT5 encoder's last hidden state on padded prompts, the
//! tokenizer's ids and masks for a dozen prompts (unicode, empty, longer than the limit), the
//! pipeline's zeroing past each prompt, and a tokenizer of another vocabulary refused.

use std::path::PathBuf;

use apt_data::text::Umt5TextEncoder;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/umt5")
}

fn encoder(max_length: usize) -> Umt5TextEncoder {
    Umt5TextEncoder::load(
        &fixtures().join("tokenizer"),
        &fixtures().join("text_encoder"),
        max_length,
        Device::Cpu,
    )
    .unwrap()
}

struct Tokens {
    max_length: usize,
    prompts: Vec<String>,
    ids: Vec<Vec<i64>>,
    mask: Vec<Vec<i64>>,
}

fn tokens() -> Tokens {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = |key: &str| -> Vec<Vec<i64>> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    Tokens {
        max_length: json["max_length"].as_u64().unwrap() as usize,
        prompts: json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
        ids: rows("ids"),
        mask: rows("mask"),
    }
}

#[test]
fn the_tokenizer_gives_transformers_ids_and_masks() {
    let t = tokens();
    let enc = encoder(t.max_length);
    let prompts: Vec<&str> = t.prompts.iter().map(String::as_str).collect();
    let (ids, mask) = enc.tokenize(&prompts).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let ours = Vec::<i64>::try_from(ids.get(i as i64)).unwrap();
        let ours_mask = Vec::<i64>::try_from(mask.get(i as i64)).unwrap();
        assert_eq!(ours, t.ids[i], "ids of {prompt:?}");
        assert_eq!(ours_mask, t.mask[i], "mask of {prompt:?}");
    }
}

#[test]
fn the_encoder_equals_transformers_and_zeroes_past_each_prompt() {
    let io: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("umt5.io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let t = tokens();
    let enc = encoder(t.max_length);
    let prompts: Vec<&str> = t.prompts.iter().take(4).map(String::as_str).collect();
    let (ids, mask) = enc.tokenize(&prompts).unwrap();
    assert!(ids.equal(&io["input_ids"]) && mask.equal(&io["attention_mask"]));
    let (states, lengths) = enc.encode(&prompts).unwrap();
    let expected = &io["last_hidden_state"] * io["attention_mask"].unsqueeze(-1);
    let diff = (&states - &expected).abs().max().double_value(&[]);
    println!("umt5: max abs difference {diff:e}");
    assert!(diff <= 1e-5, "max abs difference {diff:e}");
    let want: Vec<i64> = t.mask[..4].iter().map(|m| m.iter().sum()).collect();
    assert_eq!(lengths, want);
    // Past each prompt's tokens the pipeline hands the transformer zeros.
    let tail = states
        .get(1)
        .narrow(0, lengths[1], t.max_length as i64 - lengths[1]);
    assert_eq!(tail.abs().max().double_value(&[]), 0.0);
}

#[test]
fn a_tokenizer_of_a_larger_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("text_encoder/config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["vocab_size"] = 50.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixtures().join("text_encoder/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = Umt5TextEncoder::load(&fixtures().join("tokenizer"), dir.path(), 16, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("vocabulary"),
        "{e}"
    );
}

#[test]
fn the_encoder_runs_in_bf16_near_its_fp32_states() {
    let prompts = ["a red circle moves right", "赤い円が右に動く"];
    let (full, lengths) = encoder(16).encode(&prompts).unwrap();
    let mut half = encoder(16);
    half.set_kind(Kind::BFloat16);
    let (states, same) = half.encode(&prompts).unwrap();
    assert_eq!(lengths, same);
    assert_eq!(states.kind(), Kind::BFloat16);
    let err = (states.to_kind(Kind::Float) - &full)
        .abs()
        .max()
        .double_value(&[]);
    let scale = full.abs().max().double_value(&[]);
    assert!(err <= 0.05 * scale, "bf16 error {err} at scale {scale}");
}
