//! The Wan 2.1 VAE's building blocks, named as diffusers names them: channel RMS norm, causal
//! residual block, per-frame attention, spatial/temporal resampling, middle block.

use tch::{nn, Kind, Tensor};

use crate::causal_conv::{CacheSlot, CausalConv3d, FeatureCache, SlotCounter, CACHE_FRAMES};

/// diffusers' `WanRMS_norm`: L2-normalise over channels, times √C · `gamma` (no bias).
#[derive(Debug)]
pub struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    /// `video`: gamma is [C, 1, 1, 1] (for [B, C, T, H, W]); else [C, 1, 1] (for [N, C, H, W]).
    pub fn new(path: nn::Path, dim: i64, video: bool) -> Self {
        let shape: Vec<i64> = if video {
            vec![dim, 1, 1, 1]
        } else {
            vec![dim, 1, 1]
        };
        Self {
            gamma: path.var("gamma", &shape, nn::Init::Const(1.0)),
            scale: (dim as f64).sqrt(),
        }
    }

    /// Normalises over dim 1 (in fp32 for half-precision inputs, like diffusers).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = if matches!(kind, Kind::Half | Kind::BFloat16) {
            x.to_kind(Kind::Float)
        } else {
            x.shallow_clone()
        };
        // F.normalize: x / max(‖x‖₂, 1e-12).
        let norm = xf
            .norm_scalaropt_dim(2, [1i64], true)
            .clamp_min(1e-12)
            .expand_as(&xf);
        (xf / norm).to_kind(kind) * self.scale * &self.gamma
    }
}

/// diffusers' `WanResidualBlock`: (RMS norm → SiLU → causal 3×3×3 conv) twice, plus a 1×1×1
/// shortcut when the channels change.
#[derive(Debug)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
    slots: [usize; 2],
}

impl ResidualBlock {
    /// A block from `in_dim` to `out_dim` channels.
    pub fn new(path: nn::Path, in_dim: i64, out_dim: i64, slots: &mut SlotCounter) -> Self {
        Self {
            norm1: RmsNorm::new(&path / "norm1", in_dim, true),
            conv1: CausalConv3d::cube(&path / "conv1", in_dim, out_dim, 3),
            norm2: RmsNorm::new(&path / "norm2", out_dim, true),
            conv2: CausalConv3d::cube(&path / "conv2", out_dim, out_dim, 3),
            shortcut: (in_dim != out_dim)
                .then(|| CausalConv3d::cube(&path / "conv_shortcut", in_dim, out_dim, 1)),
            slots: [slots.take(), slots.take()],
        }
    }

    /// One chunk through the block.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let h = match &self.shortcut {
            Some(conv) => conv.forward(x, None),
            None => x.shallow_clone(),
        };
        let y = self.norm1.forward(x).silu();
        let y = self.conv1.forward_cached(&y, cache, self.slots[0]);
        let y = self.norm2.forward(&y).silu();
        let y = self.conv2.forward_cached(&y, cache, self.slots[1]);
        y + h
    }
}

/// [B, C, T, H, W] → [B·T, C, H, W].
fn frames_as_batch(x: &Tensor) -> Tensor {
    let [b, c, t, h, w] = x.size()[..] else {
        unreachable!("video tensors are 5-D")
    };
    x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w])
}

/// [B·T, C, H, W] → [B, C, T, H, W].
fn batch_as_frames(x: &Tensor, b: i64) -> Tensor {
    let [bt, c, h, w] = x.size()[..] else {
        unreachable!("image tensors are 4-D")
    };
    x.reshape([b, bt / b, c, h, w]).permute([0, 2, 1, 3, 4])
}

fn conv2d(path: nn::Path, in_dim: i64, out_dim: i64, k: i64, stride: i64, pad: i64) -> nn::Conv2D {
    nn::conv2d(
        path,
        in_dim,
        out_dim,
        k,
        nn::ConvConfig {
            stride,
            padding: pad,
            ..Default::default()
        },
    )
}

/// diffusers' `WanAttentionBlock`: single-head self-attention within each frame.
#[derive(Debug)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: nn::Conv2D,
    proj: nn::Conv2D,
}

impl AttentionBlock {
    /// Attention over `dim` channels.
    pub fn new(path: nn::Path, dim: i64) -> Self {
        Self {
            norm: RmsNorm::new(&path / "norm", dim, false),
            to_qkv: conv2d(&path / "to_qkv", dim, 3 * dim, 1, 1, 0),
            proj: conv2d(&path / "proj", dim, dim, 1, 1, 0),
        }
    }

    /// Attends within every frame of `x` [B, C, T, H, W]; adds the input back.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let [b, c, _, h, w] = x.size()[..] else {
            unreachable!()
        };
        let y = frames_as_batch(x);
        let bt = y.size()[0];
        let qkv = self
            .norm
            .forward(&y)
            .apply(&self.to_qkv)
            .reshape([bt, 1, 3 * c, h * w])
            .permute([0, 1, 3, 2]);
        let q = qkv.narrow(3, 0, c);
        let k = qkv.narrow(3, c, c);
        let v = qkv.narrow(3, 2 * c, c);
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        )
        .squeeze_dim(1)
        .permute([0, 2, 1])
        .reshape([bt, c, h, w])
        .apply(&self.proj);
        batch_as_frames(&y, b) + x
    }
}

/// How a [`Resample`] changes the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// Halve height and width.
    Down2d,
    /// Halve height, width and (after the first frame) time.
    Down3d,
    /// Double height and width.
    Up2d,
    /// Double height, width and (after the first frame) time.
    Up3d,
}

/// diffusers' `WanResample`: a strided 2D conv (down) or nearest ×2 + conv (up) per frame, and
/// for the 3D modes a causal conv over time (stride 2 down; ×2 channels shuffled into time up).
/// The first chunk's single frame is never resampled in time, so T = 1 + 4k frames map to
/// 1 + k latent frames and back.
#[derive(Debug)]
pub struct Resample {
    mode: ResampleMode,
    conv: nn::Conv2D,
    time_conv: Option<(CausalConv3d, usize)>,
}

impl Resample {
    /// A resampler on `dim` channels; the up modes output `dim / 2` channels (Wan 2.1).
    pub fn new(path: nn::Path, dim: i64, mode: ResampleMode, slots: &mut SlotCounter) -> Self {
        let conv = match mode {
            ResampleMode::Down2d | ResampleMode::Down3d => {
                conv2d(&path / "resample" / 1, dim, dim, 3, 2, 0)
            }
            ResampleMode::Up2d | ResampleMode::Up3d => {
                conv2d(&path / "resample" / 1, dim, dim / 2, 3, 1, 1)
            }
        };
        let time_conv = match mode {
            ResampleMode::Down3d => Some(CausalConv3d::new(
                &path / "time_conv",
                dim,
                dim,
                [3, 1, 1],
                [2, 1, 1],
                [0, 0, 0],
            )),
            ResampleMode::Up3d => Some(CausalConv3d::new(
                &path / "time_conv",
                dim,
                2 * dim,
                [3, 1, 1],
                [1, 1, 1],
                [1, 0, 0],
            )),
            _ => None,
        }
        .map(|c| (c, slots.take()));
        Self {
            mode,
            conv,
            time_conv,
        }
    }

    /// One chunk through the resampler.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let b = x.size()[0];
        let mut x = x.shallow_clone();
        if let (ResampleMode::Up3d, Some((conv, slot))) = (self.mode, &self.time_conv) {
            x = up_in_time(&x, conv, *slot, cache);
        }
        let frames = frames_as_batch(&x);
        let y = match self.mode {
            ResampleMode::Down2d | ResampleMode::Down3d => {
                frames.constant_pad_nd([0, 1, 0, 1]).apply(&self.conv)
            }
            ResampleMode::Up2d | ResampleMode::Up3d => {
                let [_, _, h, w] = frames.size()[..] else {
                    unreachable!()
                };
                frames
                    .to_kind(Kind::Float)
                    .upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0)
                    .to_kind(x.kind())
                    .apply(&self.conv)
            }
        };
        let y = batch_as_frames(&y, b);
        match (self.mode, &self.time_conv) {
            (ResampleMode::Down3d, Some((conv, slot))) => down_in_time(&y, conv, *slot, cache),
            _ => y,
        }
    }
}

/// The temporal half of an `upsample3d`: skipped on the first chunk; afterwards a causal conv
/// doubles the channels, which become two output frames per input frame.
fn up_in_time(x: &Tensor, conv: &CausalConv3d, slot: usize, cache: &mut FeatureCache) -> Tensor {
    let [b, c, t, h, w] = x.size()[..] else {
        unreachable!()
    };
    let mut keep = x.narrow(2, (t - CACHE_FRAMES).max(0), t.min(CACHE_FRAMES));
    let y = match cache.slot(slot) {
        CacheSlot::Empty => {
            cache.set(slot, CacheSlot::FirstChunkSeen);
            return x.shallow_clone();
        }
        CacheSlot::FirstChunkSeen => {
            if keep.size()[2] < CACHE_FRAMES {
                keep = Tensor::cat(&[&keep.zeros_like(), &keep], 2);
            }
            conv.forward(x, None)
        }
        CacheSlot::Frames(prev) => {
            if keep.size()[2] < CACHE_FRAMES {
                let last = prev.narrow(2, prev.size()[2] - 1, 1);
                keep = Tensor::cat(&[&last, &keep], 2);
            }
            conv.forward(x, Some(prev))
        }
    };
    cache.set(slot, CacheSlot::Frames(keep));
    // [B, 2C, T, H, W] → [B, 2, C, T, H, W] → interleave the two halves in time.
    let y = y.reshape([b, 2, c, t, h, w]);
    Tensor::stack(&[y.select(1, 0), y.select(1, 1)], 3).reshape([b, c, 2 * t, h, w])
}

/// The temporal half of a `downsample3d`: the first chunk's frame passes (and is kept); later
/// chunks are convolved (stride 2) with the previous chunk's last frame in front.
fn down_in_time(x: &Tensor, conv: &CausalConv3d, slot: usize, cache: &mut FeatureCache) -> Tensor {
    let t = x.size()[2];
    let (y, keep) = match cache.slot(slot) {
        CacheSlot::Frames(prev) => {
            let last = prev.narrow(2, prev.size()[2] - 1, 1);
            (
                conv.forward(&Tensor::cat(&[&last, x], 2), None),
                x.narrow(2, t - 1, 1),
            )
        }
        _ => (x.shallow_clone(), x.shallow_clone()),
    };
    cache.set(slot, CacheSlot::Frames(keep));
    y
}

/// diffusers' `WanMidBlock`: residual → attention → residual.
#[derive(Debug)]
pub struct MidBlock {
    first: ResidualBlock,
    attention: AttentionBlock,
    second: ResidualBlock,
}

impl MidBlock {
    /// A middle block on `dim` channels.
    pub fn new(path: nn::Path, dim: i64, slots: &mut SlotCounter) -> Self {
        let first = ResidualBlock::new(&path / "resnets" / 0, dim, dim, slots);
        let attention = AttentionBlock::new(&path / "attentions" / 0, dim);
        let second = ResidualBlock::new(&path / "resnets" / 1, dim, dim, slots);
        Self {
            first,
            attention,
            second,
        }
    }

    /// One chunk through the block.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let x = self.first.forward(x, cache);
        let x = self.attention.forward(&x);
        self.second.forward(&x, cache)
    }
}
