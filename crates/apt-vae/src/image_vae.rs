//! The SD3 / FLUX image VAE (diffusers' `AutoencoderKL` with `DownEncoderBlock2D` /
//! `UpDecoderBlock2D` stages): GroupNorm ResNet blocks, a single-head attention in the middle,
//! strided-conv downsampling and nearest-neighbour upsampling.

use tch::{nn, Tensor};

use crate::config::ImageVaeConfig;
use crate::error::{Result, VaeError};
use crate::latent::{LatentNorm, Posterior};

const EPS: f64 = 1e-6;

fn conv(path: nn::Path, in_dim: i64, out_dim: i64, k: i64, stride: i64, pad: i64) -> nn::Conv2D {
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

fn group_norm(path: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(
        path,
        groups,
        channels,
        nn::GroupNormConfig {
            eps: EPS,
            ..Default::default()
        },
    )
}

/// diffusers' `ResnetBlock2D` without time embedding.
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(path: nn::Path, groups: i64, in_dim: i64, out_dim: i64) -> Self {
        Self {
            norm1: group_norm(&path / "norm1", groups, in_dim),
            conv1: conv(&path / "conv1", in_dim, out_dim, 3, 1, 1),
            norm2: group_norm(&path / "norm2", groups, out_dim),
            conv2: conv(&path / "conv2", out_dim, out_dim, 3, 1, 1),
            shortcut: (in_dim != out_dim)
                .then(|| conv(&path / "conv_shortcut", in_dim, out_dim, 1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x
            .apply(&self.norm1)
            .silu()
            .apply(&self.conv1)
            .apply(&self.norm2)
            .silu()
            .apply(&self.conv2);
        match &self.shortcut {
            Some(c) => x.apply(c) + h,
            None => x + h,
        }
    }
}

/// diffusers' `Attention` as the VAE's middle block uses it: GroupNorm, one head over all
/// channels, residual.
#[derive(Debug)]
struct MidAttention {
    norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
}

impl MidAttention {
    fn new(path: nn::Path, groups: i64, dim: i64) -> Self {
        let lin = |name: &str| nn::linear(&path / name, dim, dim, Default::default());
        Self {
            norm: group_norm(&path / "group_norm", groups, dim),
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            to_out: nn::linear(&path / "to_out" / 0, dim, dim, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let [b, c, h, w] = x.size()[..] else {
            unreachable!("image tensors are 4-D")
        };
        let tokens = x
            .apply(&self.norm)
            .reshape([b, c, h * w])
            .transpose(1, 2)
            .unsqueeze(1);
        let y = Tensor::scaled_dot_product_attention(
            &tokens.apply(&self.to_q),
            &tokens.apply(&self.to_k),
            &tokens.apply(&self.to_v),
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        )
        .squeeze_dim(1)
        .apply(&self.to_out);
        y.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// diffusers' `UNetMidBlock2D`: ResNet → (attention) → ResNet.
#[derive(Debug)]
struct MidBlock {
    first: ResnetBlock,
    attention: Option<MidAttention>,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(path: nn::Path, groups: i64, dim: i64, attention: bool) -> Self {
        Self {
            first: ResnetBlock::new(&path / "resnets" / 0, groups, dim, dim),
            attention: attention.then(|| MidAttention::new(&path / "attentions" / 0, groups, dim)),
            second: ResnetBlock::new(&path / "resnets" / 1, groups, dim, dim),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = self.first.forward(x);
        if let Some(a) = &self.attention {
            x = a.forward(&x);
        }
        self.second.forward(&x)
    }
}

/// One encoder or decoder stage: ResNet blocks, then a resampling conv.
#[derive(Debug)]
struct Stage {
    resnets: Vec<ResnetBlock>,
    resample: Option<nn::Conv2D>,
}

/// diffusers' `AutoencoderKL` (the image VAE of SD3, FLUX, SD1, SDXL).
#[derive(Debug)]
pub struct ImageVae {
    cfg: ImageVaeConfig,
    enc_conv_in: nn::Conv2D,
    enc_stages: Vec<Stage>,
    enc_mid: MidBlock,
    enc_norm_out: nn::GroupNorm,
    enc_conv_out: nn::Conv2D,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
    dec_conv_in: nn::Conv2D,
    dec_mid: MidBlock,
    dec_stages: Vec<Stage>,
    dec_norm_out: nn::GroupNorm,
    dec_conv_out: nn::Conv2D,
}

impl ImageVae {
    /// Builds the model under `path` with diffusers' variable names (randomly initialised).
    pub fn new(path: &nn::Path, cfg: &ImageVaeConfig) -> Result<Self> {
        cfg.validate()?;
        let g = cfg.norm_num_groups;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let z = cfg.latent_channels;
        let enc = path / "encoder";
        let mut enc_stages = Vec::new();
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let p = &enc / "down_blocks" / i;
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let from = if j == 0 { prev } else { out };
                    ResnetBlock::new(&p / "resnets" / j, g, from, out)
                })
                .collect();
            let resample =
                (i + 1 < n).then(|| conv(&p / "downsamplers" / 0 / "conv", out, out, 3, 2, 0));
            enc_stages.push(Stage { resnets, resample });
            prev = out;
        }
        let dec = path / "decoder";
        let mut dec_stages = Vec::new();
        let mut prev = ch[n - 1];
        for (i, &out) in ch.iter().rev().enumerate() {
            let p = &dec / "up_blocks" / i;
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    let from = if j == 0 { prev } else { out };
                    ResnetBlock::new(&p / "resnets" / j, g, from, out)
                })
                .collect();
            let resample =
                (i + 1 < n).then(|| conv(&p / "upsamplers" / 0 / "conv", out, out, 3, 1, 1));
            dec_stages.push(Stage { resnets, resample });
            prev = out;
        }
        Ok(Self {
            cfg: cfg.clone(),
            enc_conv_in: conv(&enc / "conv_in", cfg.in_channels, ch[0], 3, 1, 1),
            enc_stages,
            enc_mid: MidBlock::new(
                &enc / "mid_block",
                g,
                ch[n - 1],
                cfg.mid_block_add_attention,
            ),
            enc_norm_out: group_norm(&enc / "conv_norm_out", g, ch[n - 1]),
            enc_conv_out: conv(&enc / "conv_out", ch[n - 1], 2 * z, 3, 1, 1),
            quant_conv: cfg
                .use_quant_conv
                .then(|| conv(path / "quant_conv", 2 * z, 2 * z, 1, 1, 0)),
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| conv(path / "post_quant_conv", z, z, 1, 1, 0)),
            dec_conv_in: conv(&dec / "conv_in", z, ch[n - 1], 3, 1, 1),
            dec_mid: MidBlock::new(
                &dec / "mid_block",
                g,
                ch[n - 1],
                cfg.mid_block_add_attention,
            ),
            dec_stages,
            dec_norm_out: group_norm(&dec / "conv_norm_out", g, ch[0]),
            dec_conv_out: conv(&dec / "conv_out", ch[0], cfg.out_channels, 3, 1, 1),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ImageVaeConfig {
        &self.cfg
    }

    /// `(z − shift_factor) · scaling_factor`, as SD3/FLUX pipelines apply it.
    pub fn latent_norm(&self) -> LatentNorm {
        LatentNorm::ScaleShift {
            scaling: self.cfg.scaling_factor,
            shift: self.cfg.shift_factor.unwrap_or(0.0),
        }
    }

    /// Encodes images [B, C, H, W] in [-1, 1] (H, W multiples of 2^(stages−1)) to the posterior
    /// over latents [B, z, H/8, W/8].
    pub fn encode(&self, image: &Tensor) -> Result<Posterior> {
        let size = image.size();
        let s = self.cfg.spatial_ratio();
        if !matches!(size[..], [_, c, h, w] if c == self.cfg.in_channels && h > 0 && w > 0 && h % s == 0 && w % s == 0)
        {
            return Err(VaeError::Input {
                argument: "image",
                expected: format!(
                    "[B, {}, H, W] with H and W multiples of {s}",
                    self.cfg.in_channels
                ),
                got: size,
            });
        }
        let mut x = image.apply(&self.enc_conv_in);
        for stage in &self.enc_stages {
            for r in &stage.resnets {
                x = r.forward(&x);
            }
            if let Some(c) = &stage.resample {
                x = x.constant_pad_nd([0, 1, 0, 1]).apply(c);
            }
        }
        let x = self.enc_mid.forward(&x);
        let mut moments = x.apply(&self.enc_norm_out).silu().apply(&self.enc_conv_out);
        if let Some(q) = &self.quant_conv {
            moments = moments.apply(q);
        }
        Ok(Posterior::from_moments(&moments))
    }

    /// Decodes latents [B, z, h, w] (unnormalised) to images [B, C, 8h, 8w] (not clamped, as
    /// diffusers).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let size = z.size();
        if !matches!(size[..], [_, c, h, w] if c == self.cfg.latent_channels && h > 0 && w > 0) {
            return Err(VaeError::Input {
                argument: "latents",
                expected: format!("[B, {}, h, w]", self.cfg.latent_channels),
                got: size,
            });
        }
        let z = match &self.post_quant_conv {
            Some(q) => z.apply(q),
            None => z.shallow_clone(),
        };
        let mut x = self.dec_mid.forward(&z.apply(&self.dec_conv_in));
        for stage in &self.dec_stages {
            for r in &stage.resnets {
                x = r.forward(&x);
            }
            if let Some(c) = &stage.resample {
                let [_, _, h, w] = x.size()[..] else {
                    unreachable!()
                };
                x = x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0).apply(c);
            }
        }
        Ok(x.apply(&self.dec_norm_out).silu().apply(&self.dec_conv_out))
    }
}
