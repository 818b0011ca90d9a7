//! Fixtures for tests and examples of the crates built on this one (apt-flow's, apt-gan's and
//! apt-dist's tests share them): a small MMDiT, fixed clips served in order, and a fixed random
//! embedding per caption — real tensors through the real traits, no data files or text model.

use apt_mmdit::{Mmdit, MmditConfig};
use tch::{nn, Device, Tensor};

use crate::data::{CaptionEncoder, ClipSource, Cursor};
use crate::error::Result;
use crate::flow::Conditioning;
use crate::rng::TensorRng;

/// Text tokens per caption of [`HashedCaptions`].
pub const TOKENS: i64 = 4;
/// Width of [`HashedCaptions`]' tokens and pooled vector (the model's `context_dim` and
/// `pooled_dim`).
pub const TEXT_WIDTH: i64 = 8;

/// A small MMDiT for `[3, 2, 16, 16]` clips: `depth` blocks, 2 heads of 16, patch 1×4×4, RoPE,
/// QK-norm, text width [`TEXT_WIDTH`], predicting `prediction` (`"velocity"` or `"sample"`).
pub fn tiny_model_config(depth: usize, prediction: &str) -> MmditConfig {
    MmditConfig::from_toml_str(&format!(
        "in_channels = 3\nout_channels = 3\npatch_size = [1, 4, 4]\ndepth = {depth}\n\
         num_heads = 2\nhead_dim = 16\ncontext_dim = {TEXT_WIDTH}\npooled_dim = {TEXT_WIDTH}\n\
         qk_norm = true\nprediction = \"{prediction}\"\n[positions]\nkind = \"rope3d\"\n",
    ))
    .expect("the tiny config is valid")
}

/// A small Wan 2.1 transformer for the same clips and captions: `depth` blocks, 2 heads of 12,
/// patch 1×2×2, FFN 32, text width [`TEXT_WIDTH`] (diffusers' test sizes, 3 channels).
pub fn tiny_wan_config(depth: usize) -> apt_mmdit::WanConfig {
    apt_mmdit::WanConfig {
        patch_size: [1, 2, 2],
        num_attention_heads: 2,
        attention_head_dim: 12,
        in_channels: 3,
        out_channels: 3,
        text_dim: TEXT_WIDTH as usize,
        freq_dim: 256,
        ffn_dim: 32,
        num_layers: depth,
        cross_attn_norm: true,
        qk_norm: Some(apt_mmdit::wan::config::QK_NORM_ACROSS_HEADS.into()),
        eps: 1e-6,
        image_dim: None,
        added_kv_proj_dim: None,
        rope_max_seq_len: 32,
        pos_embed_seq_len: None,
    }
}

/// A model of `cfg` initialised from `seed` with every weight perturbed by `N(0, 0.05²)`:
/// adaLN-Zero's zero gates and output layer would otherwise leave the blocks without gradient
/// (and the output at zero).
pub fn perturbed_model(cfg: &MmditConfig, seed: u64) -> (nn::VarStore, Mmdit) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = crate::rng::with_global_seed(seed, || Mmdit::new(vs.root(), cfg))
        .expect("the config is valid");
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (_, v)) in vars.iter_mut().enumerate() {
            let noise = TensorRng::new(seed, i as u64).normal(&v.size(), Device::Cpu);
            let _ = v.g_add_(&(noise * 0.05));
        }
    });
    (vs, model)
}

/// `count` fixed clips `[3, 2, 16, 16]` (stream 0 of seed 7, through `tanh`) served in order,
/// wrapping; clip `i` is captioned `"clip {i mod captions}"`.
#[derive(Debug)]
pub struct FixedClips {
    clips: Tensor,
    captions: usize,
    cursor: Cursor,
}

impl FixedClips {
    /// `count` clips with `captions` distinct captions.
    pub fn new(count: usize, captions: usize) -> Self {
        Self {
            clips: TensorRng::new(7, 0)
                .normal(&[count as i64, 3, 2, 16, 16], Device::Cpu)
                .tanh(),
            captions,
            cursor: Cursor::default(),
        }
    }
}

impl ClipSource for FixedClips {
    fn next_clips(&mut self, batch: usize) -> Result<(Tensor, Vec<String>)> {
        let count = self.clips.size()[0] as usize;
        let idx: Vec<i64> = (0..batch)
            .map(|i| ((self.cursor.position + i) % count) as i64)
            .collect();
        self.cursor.position += batch;
        let captions = idx
            .iter()
            .map(|&i| format!("clip {}", i as usize % self.captions))
            .collect();
        Ok((
            self.clips.index_select(0, &Tensor::from_slice(&idx)),
            captions,
        ))
    }

    fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn restore(&mut self, cursor: Cursor) -> Result<()> {
        self.cursor = cursor;
        Ok(())
    }

    fn clip_shape(&self) -> [i64; 4] {
        [3, 2, 16, 16]
    }
}

/// A fixed random embedding per caption ([`TOKENS`] tokens and a pooled vector of
/// [`TEXT_WIDTH`], seeded by the caption's bytes); a dropped caption (CFG) is all zeros.
#[derive(Debug, Default)]
pub struct HashedCaptions;

impl CaptionEncoder for HashedCaptions {
    fn encode(&self, captions: &[String], drop: &[bool]) -> Result<Conditioning> {
        let (context, pooled): (Vec<Tensor>, Vec<Tensor>) = captions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut rng = TensorRng::new(1 + c.bytes().map(u64::from).sum::<u64>(), 1);
                let scale = if drop.get(i).copied().unwrap_or(false) {
                    0.0
                } else {
                    1.0
                };
                (
                    rng.normal(&[TOKENS, TEXT_WIDTH], Device::Cpu) * scale,
                    rng.normal(&[TEXT_WIDTH], Device::Cpu) * scale,
                )
            })
            .unzip();
        Ok(Conditioning {
            context: Tensor::stack(&context, 0),
            pooled: Tensor::stack(&pooled, 0),
        })
    }
}
