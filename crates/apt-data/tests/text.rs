//! MiniLM parity against Hugging Face transformers (fixture from scripts/make_minilm_fixture.py)
//! and the on-disk embedding cache.

use std::collections::HashMap;
use std::path::PathBuf;

use apt_data::{EmbeddingCache, TextEncoder};
use tch::{Device, Tensor};

const CAPTIONS: [&str; 5] = [
    "",
    "a red circle moves left",
    "a yellow triangle moves up and to the right quickly",
    "A Green SQUARE moves DOWN, slowly... and a cyan circle moves right!",
    "Ein großer Hund läuft schnell über die Wiese – naïve café 東京",
];

fn fixture() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm.safetensors");
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn minilm_matches_transformers() {
    let encoder = TextEncoder::minilm(Device::Cpu).unwrap();
    let fx = fixture();
    let batch = encoder.encode_batch(&CAPTIONS).unwrap();
    let mut worst: f64 = 0.0;
    for (i, caption) in CAPTIONS.iter().enumerate() {
        let ids = encoder.token_ids(caption).unwrap();
        let expected_ids = Vec::<i64>::try_from(&fx[&format!("input_ids.{i}")]).unwrap();
        assert_eq!(ids, expected_ids, "token ids of {caption:?}");
        let single = encoder.encode(caption).unwrap();
        for e in [&single, &batch[i]] {
            assert_eq!(e.context.size(), fx[&format!("context.{i}")].size());
            worst = worst.max(max_diff(&e.context, &fx[&format!("context.{i}")]));
            worst = worst.max(max_diff(&e.pooled, &fx[&format!("pooled.{i}")]));
        }
    }
    eprintln!("MiniLM max abs diff vs transformers: {worst:e}");
    assert!(worst <= 1e-4, "max abs diff {worst}");
    assert_eq!(encoder.width(), 384);
    // Different captions give clearly different pooled vectors.
    let cos =
        batch[1].pooled.dot(&batch[2].pooled) / (batch[1].pooled.norm() * batch[2].pooled.norm());
    assert!(cos.double_value(&[]) < 0.95);
}

#[test]
fn the_cache_stores_one_file_per_caption_and_returns_the_same_embedding() {
    let encoder = TextEncoder::minilm(Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::new(dir.path()).unwrap();
    let a = cache.get("a blue square moves down", &encoder).unwrap();
    let null = cache.get("", &encoder).unwrap();
    assert_eq!(null.context.size(), vec![2, 384], "[CLS] [SEP]");
    assert!(cache.path_for("a blue square moves down").is_file());
    // A fresh cache on the same folder reads the file instead of encoding.
    let again = EmbeddingCache::new(dir.path())
        .unwrap()
        .get("a blue square moves down", &encoder)
        .unwrap();
    assert!(again.context.equal(&a.context) && again.pooled.equal(&a.pooled));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // A damaged cache file is encoded again and replaced.
    let fresh = encoder.encode("x").unwrap();
    std::fs::write(cache.path_for("x"), b"garbage").unwrap();
    let healed = EmbeddingCache::new(dir.path())
        .unwrap()
        .get("x", &encoder)
        .unwrap();
    assert!(healed.context.equal(&fresh.context) && healed.pooled.equal(&fresh.pooled));
    let reread = EmbeddingCache::new(dir.path())
        .unwrap()
        .get_with("x", |_| {
            panic!("the replaced file must be read, not re-encoded")
        })
        .unwrap();
    assert!(reread.context.equal(&fresh.context));
}

#[test]
fn a_failed_cache_write_is_an_error_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::new(dir.path()).unwrap();
    // The entry's name is taken by a non-empty directory, so the final rename fails.
    let blocked = cache.path_for("blocked");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let embedding = |_: &str| {
        Ok(apt_data::TextEmbedding {
            context: Tensor::ones([3, 4], (tch::Kind::Float, Device::Cpu)),
            pooled: Tensor::ones([4], (tch::Kind::Float, Device::Cpu)),
        })
    };
    let err = cache
        .get_with("blocked", embedding)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&blocked.display().to_string()), "{err}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "only the blocking directory: {left:?}");
}
