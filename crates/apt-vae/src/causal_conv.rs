//! Causal 3D convolution and the feature cache that lets the Wan VAE run a video chunk by chunk.
//!
//! A causal convolution pads time only in front (2·p frames of zeros), so frame t never sees
//! frame t+1. To encode/decode a long video in chunks, every cached convolution keeps the last
//! two frames of its input; the next chunk is convolved with those frames in front instead of
//! zeros. diffusers keeps the cache as a list indexed by call order; here each layer owns a
//! fixed slot, assigned when the model is built ([`SlotCounter`]).

use std::borrow::Borrow;

use tch::{nn, Tensor};

/// Frames of context a cached convolution keeps (diffusers' `CACHE_T`).
pub const CACHE_FRAMES: i64 = 2;

/// What one cache slot holds between chunks.
#[derive(Debug, Default)]
pub enum CacheSlot {
    /// Nothing yet: the first chunk.
    #[default]
    Empty,
    /// The temporal upsampler has seen the first chunk (which it does not upsample in time);
    /// diffusers' `"Rep"` marker.
    FirstChunkSeen,
    /// The last input frames of the previous chunk.
    Frames(Tensor),
}

impl CacheSlot {
    fn frames(&self) -> Option<&Tensor> {
        match self {
            CacheSlot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// The cache of one encoder or decoder pass over a video (one slot per cached layer).
#[derive(Debug)]
pub struct FeatureCache {
    slots: Vec<CacheSlot>,
}

impl FeatureCache {
    /// An empty cache with `slots` slots (see [`SlotCounter::count`]).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots).map(|_| CacheSlot::Empty).collect(),
        }
    }

    /// The slot `i`.
    pub fn slot(&self, i: usize) -> &CacheSlot {
        &self.slots[i]
    }

    /// Replaces slot `i`.
    pub fn set(&mut self, i: usize, slot: CacheSlot) {
        self.slots[i] = slot;
    }
}

/// Hands out cache slots while a model is built.
#[derive(Debug, Default)]
pub struct SlotCounter(usize);

impl SlotCounter {
    /// The next free slot.
    pub fn take(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }

    /// Slots handed out so far.
    pub fn count(&self) -> usize {
        self.0
    }
}

/// diffusers' `WanCausalConv3d`: a `Conv3d` (weights `weight` [out, in, kt, kh, kw], `bias`)
/// whose time padding is all in front.
#[derive(Debug)]
pub struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
    stride: [i64; 3],
    /// `[w, w, h, h, 2·t, 0]`, `F.pad` order.
    pad: [i64; 6],
}

impl CausalConv3d {
    /// A convolution with kernel `k` = (t, h, w), stride and symmetric padding `p` = (t, h, w)
    /// (time padding becomes 2·p_t frames in front). Weights are Kaiming-uniform, biases zero.
    pub fn new<'a>(
        path: impl Borrow<nn::Path<'a>>,
        in_dim: i64,
        out_dim: i64,
        k: [i64; 3],
        stride: [i64; 3],
        p: [i64; 3],
    ) -> Self {
        let path = path.borrow();
        let fan_in = in_dim * k.iter().product::<i64>();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = path.var(
            "weight",
            &[out_dim, in_dim, k[0], k[1], k[2]],
            nn::init::DEFAULT_KAIMING_UNIFORM,
        );
        let bias = path.var(
            "bias",
            &[out_dim],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        Self {
            weight,
            bias,
            stride,
            pad: [p[2], p[2], p[1], p[1], 2 * p[0], 0],
        }
    }

    /// A k×k×k convolution with stride 1 and "same" padding (k = 3 → padding 1).
    pub fn cube<'a>(path: impl Borrow<nn::Path<'a>>, in_dim: i64, out_dim: i64, k: i64) -> Self {
        Self::new(path, in_dim, out_dim, [k; 3], [1; 3], [k / 2; 3])
    }

    /// Front time padding in frames.
    pub fn time_padding(&self) -> i64 {
        self.pad[4]
    }

    /// Convolves `x` [B, C, T, H, W], with `cache` (earlier frames) in front instead of zeros
    /// where given.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Tensor {
        let mut pad = self.pad;
        let joined;
        let x = match cache {
            Some(c) if pad[4] > 0 => {
                pad[4] -= c.size()[2];
                joined = Tensor::cat(&[c, x], 2);
                &joined
            }
            _ => x,
        };
        let padded;
        let x = if pad.iter().any(|p| *p != 0) {
            padded = x.constant_pad_nd(pad);
            &padded
        } else {
            x
        };
        x.conv3d(
            &self.weight,
            Some(&self.bias),
            self.stride,
            [0, 0, 0],
            [1, 1, 1],
            1,
        )
    }

    /// The cached step every causal layer of the Wan VAE takes: convolve `x` with the slot's
    /// frames in front, then keep the last [`CACHE_FRAMES`] frames of `x` (topped up with the
    /// previous chunk's last frame when `x` is shorter) for the next chunk.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatureCache, slot: usize) -> Tensor {
        let t = x.size()[2];
        let mut keep = x.narrow(2, (t - CACHE_FRAMES).max(0), t.min(CACHE_FRAMES));
        if keep.size()[2] < CACHE_FRAMES {
            if let Some(prev) = cache.slot(slot).frames() {
                let last = prev.narrow(2, prev.size()[2] - 1, 1);
                keep = Tensor::cat(&[&last, &keep], 2);
            }
        }
        let out = self.forward(x, cache.slot(slot).frames());
        cache.set(slot, CacheSlot::Frames(keep));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Running a causal conv chunk by chunk with the cache equals running it on the whole clip.
    #[test]
    fn chunked_with_cache_equals_whole() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = CausalConv3d::cube(vs.root(), 2, 3, 3);
        let x = Tensor::randn([1, 2, 9, 5, 6], (Kind::Float, Device::Cpu));
        let whole = conv.forward(&x, None);
        let mut cache = FeatureCache::new(1);
        let mut parts = vec![conv.forward_cached(&x.narrow(2, 0, 1), &mut cache, 0)];
        for i in 0..2 {
            parts.push(conv.forward_cached(&x.narrow(2, 1 + 4 * i, 4), &mut cache, 0));
        }
        let chunked = Tensor::cat(&parts, 2);
        assert_eq!(whole.size(), vec![1, 3, 9, 5, 6]);
        let diff = (whole - chunked).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn output_frame_t_ignores_later_frames() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = CausalConv3d::cube(vs.root(), 1, 1, 3);
        let x = Tensor::randn([1, 1, 6, 4, 4], (Kind::Float, Device::Cpu));
        let y = x.copy();
        let _ = y.narrow(2, 4, 2).fill_(7.0);
        let diff = (conv.forward(&x, None) - conv.forward(&y, None))
            .narrow(2, 0, 4)
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0);
    }
}
