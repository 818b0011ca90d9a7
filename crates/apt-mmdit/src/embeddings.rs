//! Input and output layers: 3D patch embedding (+ SD3's sin-cos table), timestep and pooled
//! text embedding, and unpatchify.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::config::{MmditConfig, Positions};
use crate::lora::{linear, Linear};

/// Width of the sinusoidal timestep features (SD3: 256).
pub const TIMESTEP_FEATURES: i64 = 256;

/// The patch grid of one input: frames, rows, columns (in patches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    /// Patches along time.
    pub t: i64,
    /// Patches along height.
    pub h: i64,
    /// Patches along width.
    pub w: i64,
}

impl PatchGrid {
    /// Number of visual tokens.
    pub fn len(&self) -> i64 {
        self.t * self.h * self.w
    }

    /// True when the grid holds no patch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 3D patch embedding: non-overlapping `(pt, ph, pw)` patches, flattened in (t, h, w) order and
/// projected to the model width (a strided convolution written as one matmul). With sin-cos
/// positions the centre-cropped table is added. Weights are `pos_embed.proj.{weight,bias}` in
/// convolution layout: `[D, C, ph, pw]` when `pt = 1` (exactly diffusers' Conv2d), else
/// `[D, C, pt, ph, pw]`.
#[derive(Debug)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: [i64; 3],
    hidden: i64,
    /// `[max², D]` sin-cos table and its side, for [`Positions::Sincos2d`].
    table: Option<(Tensor, i64)>,
}

impl PatchEmbed {
    /// Creates the layer under `p` (`pos_embed`).
    pub fn new(p: nn::Path, cfg: &MmditConfig) -> Self {
        let [pt, ph, pw] = cfg.patch_size.map(|x| x as i64);
        let (d, c) = (cfg.hidden_size() as i64, cfg.in_channels as i64);
        let shape: Vec<i64> = if pt == 1 {
            vec![d, c, ph, pw]
        } else {
            vec![d, c, pt, ph, pw]
        };
        let proj = &p / "proj";
        // The same initialisation as every linear layer (tch's default, Kaiming-uniform).
        let weight = proj.var("weight", &shape, nn::init::DEFAULT_KAIMING_UNIFORM);
        let bound = 1.0 / (cfg.patch_dim() as f64).sqrt();
        let bias = proj.var(
            "bias",
            &[d],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let table = match cfg.positions {
            Positions::Sincos2d {
                max_size,
                base_size,
            } => {
                let t = sincos_2d_table(d, max_size as i64, base_size as i64)
                    .to_kind(p.kind())
                    .to_device(p.device())
                    .unsqueeze(0);
                Some((p.add("pos_embed", t, false), max_size as i64))
            }
            Positions::Rope3d { .. } => None,
        };
        Self {
            weight,
            bias,
            patch: [pt, ph, pw],
            hidden: d,
            table,
        }
    }

    /// `[B, C, T, H, W]` → `[B, N, D]` tokens (the caller has checked divisibility).
    pub fn forward(&self, x: &Tensor, grid: PatchGrid) -> Tensor {
        let (b, c) = (x.size()[0], x.size()[1]);
        let [pt, ph, pw] = self.patch;
        let patches = x
            .view([b, c, grid.t, pt, grid.h, ph, grid.w, pw].as_slice())
            .permute([0, 2, 4, 6, 1, 3, 5, 7])
            .reshape([b, grid.len(), -1]);
        let tokens = patches.linear(&self.weight.view([self.hidden, -1]), Some(&self.bias));
        match &self.table {
            None => tokens,
            Some((table, max)) => {
                let top = (max - grid.h) / 2;
                let left = (max - grid.w) / 2;
                let crop = table
                    .view([*max, *max, self.hidden])
                    .narrow(0, top, grid.h)
                    .narrow(1, left, grid.w)
                    .reshape([1, grid.h * grid.w, self.hidden]);
                let crop = if grid.t == 1 {
                    crop
                } else {
                    crop.repeat([1, grid.t, 1])
                };
                tokens + crop.to_kind(x.kind())
            }
        }
    }

    /// Side of the sin-cos table, if any.
    pub fn table_size(&self) -> Option<i64> {
        self.table.as_ref().map(|(_, m)| *m)
    }
}

/// SD3's 2D sin-cos position table, `[max², D]`, computed like diffusers: coordinates
/// `i / (max / base)` in f32, features in f64; the column coordinate's `[sin, cos]` features
/// first, then the row's.
pub fn sincos_2d_table(dim: i64, max_size: i64, base_size: i64) -> Tensor {
    let coords = (Tensor::arange(max_size, (Kind::Float, tch::Device::Cpu))
        / (max_size as f64 / base_size as f64))
        .to_kind(Kind::Double);
    let rows = coords
        .view([max_size, 1])
        .expand([max_size, max_size], false)
        .reshape([-1]);
    let cols = coords
        .view([1, max_size])
        .expand([max_size, max_size], false)
        .reshape([-1]);
    let half = dim / 2;
    Tensor::cat(&[sincos_1d(half, &cols), sincos_1d(half, &rows)], 1).to_kind(Kind::Float)
}

/// `[sin(p·ω), cos(p·ω)]` with `ω_i = 1 / 10000^(i / (dim/2))`, for positions `p` (f64).
fn sincos_1d(dim: i64, positions: &Tensor) -> Tensor {
    let exponent = Tensor::arange(dim / 2, (Kind::Double, tch::Device::Cpu)) / (dim as f64 / 2.0);
    let omega = Tensor::from(10_000f64).pow(&exponent).reciprocal();
    let out = positions.outer(&omega);
    Tensor::cat(&[out.sin(), out.cos()], 1)
}

/// Sinusoidal timestep features exactly as diffusers' `Timesteps(256, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`: `[cos(t·f), sin(t·f)]`, `f_i = 10000^(-i/128)`, computed in f32.
/// `t` is on diffusers' 0..1000 scale, shape `[B]`; returns `[B, 256]`.
pub fn timestep_features(t: &Tensor) -> Tensor {
    timestep_features_of(t, TIMESTEP_FEATURES)
}

/// [`timestep_features`] with `features` channels (even): `[cos(t·f), sin(t·f)]`,
/// `f_i = 10000^(-i/(features/2))` (diffusers' `Timesteps(features, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`, Wan's `freq_dim`).
pub fn timestep_features_of(t: &Tensor, features: i64) -> Tensor {
    let half = features / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * -(10_000f64.ln());
    let freqs = (exponent / half as f64).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], -1)
}

/// Two linears with SiLU between (`linear_1`, `linear_2`).
#[derive(Debug)]
struct Mlp2 {
    linear_1: Linear,
    linear_2: Linear,
}

impl Mlp2 {
    fn new(p: nn::Path, input: i64, width: i64) -> Self {
        Self {
            linear_1: linear(&p / "linear_1", input, width, Default::default()),
            linear_2: linear(&p / "linear_2", width, width, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

/// The conditioning vector `c = MLP(timestep features) + MLP(pooled text)` that drives every
/// adaLN modulation (diffusers' `time_text_embed`).
#[derive(Debug)]
pub struct TimeTextEmbed {
    timestep_embedder: Mlp2,
    text_embedder: Mlp2,
}

impl TimeTextEmbed {
    /// Creates the layer under `p` (`time_text_embed`).
    pub fn new(p: nn::Path, cfg: &MmditConfig) -> Self {
        let d = cfg.hidden_size() as i64;
        Self {
            timestep_embedder: Mlp2::new(&p / "timestep_embedder", TIMESTEP_FEATURES, d),
            text_embedder: Mlp2::new(&p / "text_embedder", cfg.pooled_dim as i64, d),
        }
    }

    /// `t` on the 0..1000 scale `[B]`, pooled text `[B, D_pool]` → `[B, D]`.
    pub fn forward(&self, t1000: &Tensor, pooled: &Tensor) -> Tensor {
        let features = timestep_features(t1000).to_kind(pooled.kind());
        self.timestep_embedder.forward(&features) + self.text_embedder.forward(pooled)
    }
}

/// `[B, N, pt·ph·pw·C]` tokens → `[B, C, T, H, W]`; per token the channels are laid out
/// `(pt, ph, pw, C)` (diffusers' `(p, q, c)` when `pt = 1`).
pub fn unpatchify(tokens: &Tensor, grid: PatchGrid, patch: [i64; 3], channels: i64) -> Tensor {
    let b = tokens.size()[0];
    let [pt, ph, pw] = patch;
    tokens
        .view([b, grid.t, grid.h, grid.w, pt, ph, pw, channels].as_slice())
        .permute([0, 7, 1, 4, 2, 5, 3, 6])
        .reshape([b, channels, grid.t * pt, grid.h * ph, grid.w * pw])
}
