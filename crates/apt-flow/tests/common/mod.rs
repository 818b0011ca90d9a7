//! What the training tests share: a small MMDiT with every weight perturbed, eight fixed
//! clips served in order, and a fixed random embedding per caption.

use apt_flow::data::{CaptionEncoder, ClipSource, Cursor};
use apt_flow::{Conditioning, Result, TensorRng};
use apt_mmdit::{Mmdit, MmditConfig};
use tch::{nn, Device, Tensor};

pub const CPU: Device = Device::Cpu;

pub fn model_config(prediction: &str) -> MmditConfig {
    MmditConfig::from_toml_str(&format!(
        "in_channels = 3\nout_channels = 3\npatch_size = [1, 4, 4]\ndepth = 3\nnum_heads = 2\n\
         head_dim = 16\ncontext_dim = 8\npooled_dim = 8\nqk_norm = true\n\
         prediction = \"{prediction}\"\n[positions]\nkind = \"rope3d\"\n",
    ))
    .unwrap()
}

/// Eight fixed clips `[3, 2, 16, 16]`, served in order.
pub struct Clips {
    clips: Tensor,
    cursor: Cursor,
}

impl Clips {
    pub fn new() -> Self {
        Self {
            clips: TensorRng::new(7, 0).normal(&[8, 3, 2, 16, 16], CPU).tanh(),
            cursor: Cursor::default(),
        }
    }
}

impl ClipSource for Clips {
    fn next_clips(&mut self, batch: usize) -> Result<(Tensor, Vec<String>)> {
        let idx: Vec<i64> = (0..batch)
            .map(|i| ((self.cursor.position + i) % 8) as i64)
            .collect();
        self.cursor.position += batch;
        let captions = idx.iter().map(|i| format!("clip {}", i % 3)).collect();
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

/// A fixed random embedding per caption (4 tokens of width 8); the null caption is zeros.
pub struct Embeddings;

impl CaptionEncoder for Embeddings {
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
                    rng.normal(&[4, 8], CPU) * scale,
                    rng.normal(&[8], CPU) * scale,
                )
            })
            .unzip();
        Ok(Conditioning {
            context: Tensor::stack(&context, 0),
            pooled: Tensor::stack(&pooled, 0),
        })
    }
}

/// A model from `seed` with every weight perturbed: adaLN-Zero's zero gates and output layer
/// would otherwise leave the blocks without gradient (and the model's output at zero).
pub fn model(prediction: &str, seed: i64) -> (nn::VarStore, Mmdit) {
    let vs = nn::VarStore::new(CPU);
    let m = apt_flow::rng::with_global_seed(seed as u64, || {
        Mmdit::new(vs.root(), &model_config(prediction))
    })
    .unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (_, v)) in vars.iter_mut().enumerate() {
            let noise = TensorRng::new(seed as u64, i as u64).normal(&v.size(), CPU);
            let _ = v.g_add_(&(noise * 0.05));
        }
    });
    (vs, m)
}
