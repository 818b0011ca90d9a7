//! The Wan 2.1 video VAE (diffusers' `AutoencoderKLWan`): a causal 3D encoder and decoder run
//! chunk by chunk with a feature cache — the first frame alone, then groups of
//! [`WanVaeConfig::temporal_ratio`] frames → one latent frame each — so memory does not grow
//! with the clip length, and a 1-frame video is an image.

use tch::{nn, Tensor};

use crate::causal_conv::{CausalConv3d, FeatureCache, SlotCounter};
use crate::config::WanVaeConfig;
use crate::error::{Result, VaeError};
use crate::latent::{LatentNorm, Posterior};
use crate::tiling::{decode_tiled, Tiling};
use crate::wan_blocks::{MidBlock, Resample, ResampleMode, ResidualBlock, RmsNorm};

/// One layer of the encoder's flat `down_blocks` list.
#[derive(Debug)]
enum DownLayer {
    Residual(ResidualBlock),
    Resample(Resample),
}

/// diffusers' `WanEncoder3d`.
#[derive(Debug)]
struct Encoder {
    conv_in: (CausalConv3d, usize),
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: (CausalConv3d, usize),
    slots: usize,
}

impl Encoder {
    fn new(path: nn::Path, cfg: &WanVaeConfig) -> Self {
        let mut slots = SlotCounter::default();
        let dims: Vec<i64> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| cfg.base_dim * m)
            .collect();
        let conv_in = (
            CausalConv3d::cube(&path / "conv_in", cfg.in_channels, dims[0], 3),
            slots.take(),
        );
        let mut down = Vec::new();
        let stages = cfg.dim_mult.len();
        for i in 0..stages {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                let p = &path / "down_blocks" / down.len();
                down.push(DownLayer::Residual(ResidualBlock::new(
                    p, in_dim, out_dim, &mut slots,
                )));
                in_dim = out_dim;
            }
            if i + 1 < stages {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Down3d
                } else {
                    ResampleMode::Down2d
                };
                let p = &path / "down_blocks" / down.len();
                down.push(DownLayer::Resample(Resample::new(
                    p, out_dim, mode, &mut slots,
                )));
            }
        }
        let last = dims[stages];
        let mid = MidBlock::new(&path / "mid_block", last, &mut slots);
        let norm_out = RmsNorm::new(&path / "norm_out", last, true);
        let conv_out = (
            CausalConv3d::cube(&path / "conv_out", last, 2 * cfg.z_dim, 3),
            slots.take(),
        );
        Self {
            conv_in,
            down,
            mid,
            norm_out,
            conv_out,
            slots: slots.count(),
        }
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let mut x = self.conv_in.0.forward_cached(x, cache, self.conv_in.1);
        for layer in &self.down {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache),
                DownLayer::Resample(resample) => resample.forward(&x, cache),
            };
        }
        let x = self.mid.forward(&x, cache);
        let x = self.norm_out.forward(&x).silu();
        self.conv_out.0.forward_cached(&x, cache, self.conv_out.1)
    }
}

/// diffusers' `WanUpBlock`: residual blocks, then an optional upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

/// diffusers' `WanDecoder3d`.
#[derive(Debug)]
struct Decoder {
    conv_in: (CausalConv3d, usize),
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: (CausalConv3d, usize),
    slots: usize,
}

impl Decoder {
    fn new(path: nn::Path, cfg: &WanVaeConfig) -> Self {
        let mut slots = SlotCounter::default();
        let base = cfg.decoder_dim();
        let stages = cfg.dim_mult.len();
        let dims: Vec<i64> = std::iter::once(cfg.dim_mult[stages - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| base * m)
            .collect();
        let temporal_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let conv_in = (
            CausalConv3d::cube(&path / "conv_in", cfg.z_dim, dims[0], 3),
            slots.take(),
        );
        let mid = MidBlock::new(&path / "mid_block", dims[0], &mut slots);
        let mut up = Vec::new();
        for i in 0..stages {
            // Every upsampler halves the channels, so stages after the first start at half.
            let in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let p = &path / "up_blocks" / i;
            let resnets = (0..=cfg.num_res_blocks)
                .map(|j| {
                    let from = if j == 0 { in_dim } else { out_dim };
                    ResidualBlock::new(&p / "resnets" / j, from, out_dim, &mut slots)
                })
                .collect();
            let upsampler = (i + 1 < stages).then(|| {
                let mode = if temporal_up[i] {
                    ResampleMode::Up3d
                } else {
                    ResampleMode::Up2d
                };
                Resample::new(&p / "upsamplers" / 0, out_dim, mode, &mut slots)
            });
            up.push(UpBlock { resnets, upsampler });
        }
        let last = dims[stages];
        let norm_out = RmsNorm::new(&path / "norm_out", last, true);
        let conv_out = (
            CausalConv3d::cube(&path / "conv_out", last, cfg.out_channels, 3),
            slots.take(),
        );
        Self {
            conv_in,
            mid,
            up,
            norm_out,
            conv_out,
            slots: slots.count(),
        }
    }

    fn forward(&self, z: &Tensor, cache: &mut FeatureCache) -> Tensor {
        let x = self.conv_in.0.forward_cached(z, cache, self.conv_in.1);
        let mut x = self.mid.forward(&x, cache);
        for block in &self.up {
            for resnet in &block.resnets {
                x = resnet.forward(&x, cache);
            }
            if let Some(upsampler) = &block.upsampler {
                x = upsampler.forward(&x, cache);
            }
        }
        let x = self.norm_out.forward(&x).silu();
        self.conv_out.0.forward_cached(&x, cache, self.conv_out.1)
    }
}

/// The Wan 2.1 video VAE. Variables carry diffusers' names (`encoder.*`, `decoder.*`,
/// `quant_conv.*`, `post_quant_conv.*`), so a diffusers directory loads into it exactly
/// (`WanVae::from_diffusers_dir`).
#[derive(Debug)]
pub struct WanVae {
    cfg: WanVaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
}

impl WanVae {
    /// Builds the model under `path` (randomly initialised; trainable).
    pub fn new(path: &nn::Path, cfg: &WanVaeConfig) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(path / "encoder", cfg),
            quant_conv: CausalConv3d::cube(path / "quant_conv", 2 * z, 2 * z, 1),
            post_quant_conv: CausalConv3d::cube(path / "post_quant_conv", z, z, 1),
            decoder: Decoder::new(path / "decoder", cfg),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WanVaeConfig {
        &self.cfg
    }

    /// The latent normalisation the diffusion model sees: per-channel mean and std.
    pub fn latent_norm(&self) -> LatentNorm {
        LatentNorm::PerChannel {
            mean: self.cfg.latents_mean.clone(),
            std: self.cfg.latents_std.clone(),
        }
    }

    fn check_video(&self, x: &Tensor) -> Result<[i64; 5]> {
        let size = x.size();
        let ratio = self.cfg.temporal_ratio();
        let s = self.cfg.spatial_ratio();
        match size[..] {
            [b, c, t, h, w]
                if c == self.cfg.in_channels
                    && t >= 1
                    && (t - 1) % ratio == 0
                    && h % s == 0
                    && w % s == 0
                    && h > 0
                    && w > 0 =>
            {
                Ok([b, c, t, h, w])
            }
            _ => Err(VaeError::Input {
                argument: "video",
                expected: format!(
                    "[B, {}, 1 + {ratio}k, H, W] with H and W multiples of {s}",
                    self.cfg.in_channels
                ),
                got: size,
            }),
        }
    }

    /// Encodes a video [B, C, T, H, W] in [-1, 1] (T = 1 + 4k for Wan 2.1) to the posterior over
    /// its latents [B, z, 1 + k, H/8, W/8] (unnormalised; see [`LatentNorm`]).
    pub fn encode(&self, video: &Tensor) -> Result<Posterior> {
        let [_, _, t, _, _] = self.check_video(video)?;
        let ratio = self.cfg.temporal_ratio();
        let mut cache = FeatureCache::new(self.encoder.slots);
        let mut chunks = vec![self.encoder.forward(&video.narrow(2, 0, 1), &mut cache)];
        for i in 0..(t - 1) / ratio {
            let chunk = video.narrow(2, 1 + ratio * i, ratio);
            chunks.push(self.encoder.forward(&chunk, &mut cache));
        }
        let moments = self.quant_conv.forward(&Tensor::cat(&chunks, 2), None);
        Ok(Posterior::from_moments(&moments))
    }

    /// Decodes latents [B, z, T', H', W'] (unnormalised) to a video [B, C, 1 + 4(T'−1), 8H', 8W']
    /// clamped to [-1, 1], one latent frame at a time.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decode_unclamped(z)?.clamp(-1.0, 1.0))
    }

    /// [`WanVae::decode`], tile by tile when the latents are larger than `tiling`'s tile
    /// (diffusers' `enable_tiling` + `decode`: overlapping tiles blended linearly), so memory is
    /// bounded by the tile size.
    pub fn decode_with(&self, z: &Tensor, tiling: Option<&Tiling>) -> Result<Tensor> {
        match tiling {
            Some(tiling) => {
                self.check_latents(z)?;
                let out = decode_tiled(z, tiling, self.cfg.spatial_ratio(), |tile| {
                    self.decode_unclamped(tile)
                })?;
                Ok(out.clamp(-1.0, 1.0))
            }
            None => self.decode(z),
        }
    }

    fn check_latents(&self, z: &Tensor) -> Result<()> {
        let size = z.size();
        match size[..] {
            [_, c, t, h, w] if c == self.cfg.z_dim && t >= 1 && h > 0 && w > 0 => Ok(()),
            _ => Err(VaeError::Input {
                argument: "latents",
                expected: format!("[B, {}, T', H', W']", self.cfg.z_dim),
                got: size,
            }),
        }
    }

    /// The decoder without the final clamp (training wants the gradient everywhere).
    pub fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        let x = self.post_quant_conv.forward(z, None);
        let mut cache = FeatureCache::new(self.decoder.slots);
        let frames: Vec<Tensor> = (0..x.size()[2])
            .map(|i| self.decoder.forward(&x.narrow(2, i, 1), &mut cache))
            .collect();
        Ok(Tensor::cat(&frames, 2))
    }
}

/// Parameters of a [`WanVae`] of `cfg` (counted on a throw-away CPU build).
pub fn parameter_count(cfg: &WanVaeConfig) -> Result<i64> {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    tch::no_grad(|| WanVae::new(&vs.root(), cfg))?;
    Ok(vs.variables().values().map(|t| t.numel() as i64).sum())
}

/// A rough count of the activation values one training step keeps for backward per clip of
/// `frames × height × width` pixels: about eight tensors of the stage's width per residual
/// block, at every resolution of the encoder and the decoder.
pub fn activation_values(cfg: &WanVaeConfig, frames: i64, height: i64, width: i64) -> i64 {
    let stages = cfg.dim_mult.len();
    let (mut t, mut h, mut w) = (frames, height, width);
    let mut total = 0;
    for i in 0..stages {
        let enc = cfg.base_dim * cfg.dim_mult[i];
        let dec = cfg.decoder_dim() * cfg.dim_mult[i];
        let voxels = t * h * w;
        total += 8 * voxels * (enc * cfg.num_res_blocks + dec * (cfg.num_res_blocks + 1));
        if i + 1 < stages {
            h = (h / 2).max(1);
            w = (w / 2).max(1);
            if cfg.temperal_downsample[i] {
                t = 1 + (t - 1) / 2;
            }
        }
    }
    total
}

impl WanVae {
    /// Replaces the per-channel latent statistics (what a trained VAE measures on its data).
    pub fn set_latent_statistics(&mut self, mean: Vec<f64>, std: Vec<f64>) -> Result<()> {
        let cfg = WanVaeConfig {
            latents_mean: mean,
            latents_std: std,
            ..self.cfg.clone()
        };
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }
}

/// Re-initialises the temporal parts of a freshly built [`WanVae`] in `vs` as the identity in
/// time, the way a 2D image VAE is inflated to 3D: every causal 3×3×3 convolution keeps only
/// its current-frame taps (earlier taps zero), every temporal downsampler passes its newest
/// frame, and every temporal upsampler copies each frame into both of its outputs. A VAE
/// trained on single frames first then reconstructs every frame of a video from the start of
/// video training, instead of adding random filters of earlier frames.
pub fn init_temporal_identity(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut w) in vs.variables() {
            if !name.ends_with("weight") || w.dim() != 5 || w.size()[2] < 2 {
                continue;
            }
            let kt = w.size()[2];
            if !name.contains("time_conv") {
                let _ = w.narrow(2, 0, kt - 1).zero_();
                continue;
            }
            let (out, inp) = (w.size()[0], w.size()[1]);
            let _ = w.zero_();
            let eye = Tensor::eye(inp, (w.kind(), w.device()));
            for start in (0..out).step_by(inp as usize) {
                let rows = inp.min(out - start);
                let mut tap = w
                    .narrow(0, start, rows)
                    .select(2, kt - 1)
                    .squeeze_dim(-1)
                    .squeeze_dim(-1);
                tap.copy_(&eye.narrow(0, 0, rows));
            }
        }
        for (name, mut b) in vs.variables() {
            if name.contains("time_conv") && name.ends_with("bias") {
                let _ = b.zero_();
            }
        }
    });
}
