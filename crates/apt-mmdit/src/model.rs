//! The MMDiT: embeddings → joint blocks → adaLN output head → unpatchify.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::block::{layer_norm, modulate, zero_linear, JointBlock};
use crate::config::{MmditConfig, Positions};
use crate::embeddings::{unpatchify, PatchEmbed, PatchGrid, TimeTextEmbed};
use crate::error::{MmditError, Result};
use crate::lora::{linear, Linear};
use crate::rope::RopeTable;
use crate::sharding::{self, BlockTag, BlockUse};

/// Scale between the model's time `t ∈ [0, 1]` and the sinusoidal embedding's input (SD3 and
/// diffusers feed `1000 · t`).
pub const TIMESTEP_SCALE: f64 = 1000.0;

/// Result of [`Mmdit::forward_with_taps`].
#[derive(Debug)]
pub struct TapOutput {
    /// The velocity prediction `[B, C, T, H, W]`, unless the caller stopped after the last tap.
    pub output: Option<Tensor>,
    /// Visual hidden states `[B, N, D]` after each requested block, in the order requested.
    pub taps: Vec<Tensor>,
}

/// Everything the blocks consume, computed once per forward.
#[derive(Debug)]
pub(crate) struct Embedded {
    pub x: Tensor,
    pub ctx: Tensor,
    pub cond: Tensor,
    pub rope: Option<RopeTable>,
    pub grid: PatchGrid,
}

/// SD3-style multimodal diffusion transformer for video latents `[B, C, T, H, W]`.
///
/// Variable names follow diffusers' `SD3Transformer2DModel`, so its safetensors load as they
/// are (see [`crate::weights`]). Modulation layers and the output projection start at zero
/// (adaLN-Zero): a fresh model predicts zero velocity.
#[derive(Debug)]
pub struct Mmdit {
    cfg: MmditConfig,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    /// Each block's identity for the sharding hooks.
    tags: Vec<BlockTag>,
    norm_out: Linear,
    proj_out: Linear,
}

impl Mmdit {
    /// Creates the model's variables under `p` (usually `vs.root()`), after validating `cfg`.
    pub fn new(p: nn::Path, cfg: &MmditConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size() as i64;
        let blocks = (0..cfg.depth)
            .map(|i| JointBlock::new(&p / "transformer_blocks" / i, cfg, i + 1 == cfg.depth))
            .collect();
        let tags = (0..cfg.depth)
            .map(|i| BlockTag::new(&(&p / "transformer_blocks" / i), "norm1.linear.weight"))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            pos_embed: PatchEmbed::new(&p / "pos_embed", cfg),
            time_text_embed: TimeTextEmbed::new(&p / "time_text_embed", cfg),
            context_embedder: linear(
                &p / "context_embedder",
                cfg.context_dim as i64,
                d,
                Default::default(),
            ),
            blocks,
            tags,
            norm_out: zero_linear(&p / "norm_out" / "linear", d, 2 * d),
            proj_out: zero_linear(&p / "proj_out", d, cfg.patch_out_dim() as i64),
        })
    }

    /// The names of the variables a model of `cfg` has (diffusers names, sorted), without
    /// building it at its size: they depend on the depth, the positions and the norms, not on
    /// any width, so they are read off a model of the same structure two heads of 6 channels
    /// wide (microseconds even for the 8B preset).
    pub fn parameter_names(cfg: &MmditConfig) -> Result<Vec<String>> {
        let mut small = MmditConfig {
            in_channels: 1,
            out_channels: 1,
            num_heads: 2,
            head_dim: 6,
            mlp_ratio: 1,
            context_dim: 1,
            pooled_dim: 1,
            ..cfg.clone()
        };
        if let Positions::Rope3d { axes_dim, .. } = &mut small.positions {
            *axes_dim = None;
        }
        let vs = nn::VarStore::new(tch::Device::Cpu);
        Self::new(vs.root(), &small)?;
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &MmditConfig {
        &self.cfg
    }

    /// The joint blocks, in order.
    pub fn blocks(&self) -> &[JointBlock] {
        &self.blocks
    }

    /// The blocks' identities for the sharding hooks, in order.
    pub fn block_tags(&self) -> &[BlockTag] {
        &self.tags
    }

    /// The network's prediction at `(x_t, t, c)`: the velocity `v`, or the clean sample `x̂0`
    /// when the config's `prediction` is `sample` (`apt_flow` converts it to a velocity).
    ///
    /// * `latents` `[B, C, T, H, W]` (images: `T = 1`), `T, H, W` divisible by the patch size;
    /// * `t` `[B]` (or one value for the whole batch), rectified-flow time in `[0, 1]`;
    /// * `context` text tokens `[B, L, context_dim]`, `pooled` `[B, pooled_dim]`.
    ///
    /// Returns `[B, out_channels, T, H, W]`.
    pub fn forward(
        &self,
        latents: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let out = self.forward_with_taps(latents, t, context, pooled, &[], true)?;
        Ok(out.output.expect("output requested"))
    }

    /// Like [`Mmdit::forward`], also returning the visual hidden states after the given blocks.
    ///
    /// `taps` are 1-based block counts: tap `k` is the output of block `k` (so `depth` is the
    /// last block). Each tap is `[B, N, D]` with `N = (T/pt)·(H/ph)·(W/pw)` visual tokens and
    /// `D = config().hidden_size()`. With `with_output = false` the forward stops after the
    /// deepest tap and skips the output head (what a discriminator backbone needs).
    pub fn forward_with_taps(
        &self,
        latents: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        taps: &[usize],
        with_output: bool,
    ) -> Result<TapOutput> {
        let t1000 =
            self.check_time(t, latents.size().first().copied().unwrap_or(0))? * TIMESTEP_SCALE;
        self.forward_scaled(latents, &t1000, context, pooled, taps, with_output)
    }

    /// [`Mmdit::forward_with_taps`] with the time already on the 0..1000 scale, `[B]`.
    fn forward_scaled(
        &self,
        latents: &Tensor,
        t1000: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        taps: &[usize],
        with_output: bool,
    ) -> Result<TapOutput> {
        let last = self.last_block_needed(taps, with_output)?;
        let e = self.embed(latents, t1000, context, pooled)?;
        let cond_silu = e.cond.silu();
        let (mut x, mut ctx) = (e.x, e.ctx);
        let mut outputs: Vec<Option<Tensor>> = taps.iter().map(|_| None).collect();
        for (i, block) in self.blocks[..last].iter().enumerate() {
            sharding::before_block(&self.tags[i])?;
            let (nx, nctx) = block.forward(&x, &ctx, &cond_silu, e.rope.as_ref());
            let graph = nx.requires_grad();
            sharding::after_block(&self.tags[i], BlockUse::Forward { graph })?;
            x = nx;
            ctx = nctx.unwrap_or(ctx);
            for (slot, &k) in outputs.iter_mut().zip(taps) {
                if k == i + 1 {
                    *slot = Some(x.shallow_clone());
                }
            }
        }
        let output = with_output.then(|| self.head(&x, &cond_silu, e.grid));
        Ok(TapOutput {
            output,
            taps: outputs
                .into_iter()
                .map(|t| t.expect("every tap is reached"))
                .collect(),
        })
    }

    /// The call exactly as diffusers' `SD3Transformer2DModel.forward`: image latents
    /// `hidden_states` `[B, C, H, W]`, `encoder_hidden_states` `[B, L, D_text]`,
    /// `pooled_projections` `[B, D_pool]`, `timestep` `[B]` on the 0..1000 scale; returns
    /// `[B, C, H, W]`.
    pub fn forward_diffusers(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        pooled_projections: &Tensor,
        timestep: &Tensor,
    ) -> Result<Tensor> {
        if hidden_states.dim() != 4 {
            return Err(input_error(
                "hidden_states",
                "[B, C, H, W] image latents",
                hidden_states,
            ));
        }
        let latents = hidden_states.unsqueeze(2);
        let t1000 = self.check_time(timestep, latents.size()[0])?;
        let out = self.forward_scaled(
            &latents,
            &t1000,
            encoder_hidden_states,
            pooled_projections,
            &[],
            true,
        )?;
        Ok(out.output.expect("output requested").squeeze_dim(2))
    }

    /// Validates the inputs and computes patch tokens, text tokens, the conditioning vector and
    /// the RoPE table. `t1000` is already on the embedding's 0..1000 scale, shape `[B]`.
    pub(crate) fn embed(
        &self,
        latents: &Tensor,
        t1000: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Embedded> {
        let cfg = &self.cfg;
        let size = latents.size();
        let [pt, ph, pw] = cfg.patch_size.map(|p| p as i64);
        if size.len() != 5 || size[1] != cfg.in_channels as i64 {
            return Err(input_error(
                "latents",
                format!("[B, {}, T, H, W]", cfg.in_channels),
                latents,
            ));
        }
        if size[2] % pt != 0
            || size[3] % ph != 0
            || size[4] % pw != 0
            || size[2] == 0
            || size[3] == 0
            || size[4] == 0
        {
            return Err(input_error(
                "latents",
                format!(
                    "T, H, W positive multiples of the patch size {:?}",
                    cfg.patch_size
                ),
                latents,
            ));
        }
        let b = size[0];
        let grid = PatchGrid {
            t: size[2] / pt,
            h: size[3] / ph,
            w: size[4] / pw,
        };
        if let Some(max) = self.pos_embed.table_size() {
            if grid.h > max || grid.w > max {
                return Err(input_error(
                    "latents",
                    format!("at most {max} patches along H and W (the sin-cos table's size)"),
                    latents,
                ));
            }
        }
        let csize = context.size();
        if csize.len() != 3 || csize[0] != b || csize[2] != cfg.context_dim as i64 || csize[1] == 0
        {
            return Err(input_error(
                "context",
                format!("[{b}, L ≥ 1, {}] text tokens", cfg.context_dim),
                context,
            ));
        }
        if pooled.size() != [b, cfg.pooled_dim as i64] {
            return Err(input_error(
                "pooled",
                format!("[{b}, {}] pooled text", cfg.pooled_dim),
                pooled,
            ));
        }
        let (kind, device) = (self.proj_out.ws.kind(), self.proj_out.ws.device());
        for (argument, tensor) in [
            ("latents", latents),
            ("context", context),
            ("pooled", pooled),
        ] {
            if tensor.device() != device {
                return Err(MmditError::Device {
                    argument,
                    expected: device,
                    got: tensor.device(),
                });
            }
        }
        let latents = latents.to_kind(kind);
        let rope = match cfg.positions {
            Positions::Rope3d { theta, .. } => Some(RopeTable::new(
                grid,
                csize[1],
                cfg.rope_axes_dim().expect("rope"),
                theta,
                kind,
                latents.device(),
            )),
            Positions::Sincos2d { .. } => None,
        };
        Ok(Embedded {
            x: self.pos_embed.forward(&latents, grid),
            ctx: self.context_embedder.forward(&context.to_kind(kind)),
            cond: self
                .time_text_embed
                .forward(&t1000.to_device(device), &pooled.to_kind(kind)),
            rope,
            grid,
        })
    }

    /// Final adaLN (continuous: scale, shift) + linear + unpatchify.
    pub(crate) fn head(&self, x: &Tensor, cond_silu: &Tensor, grid: PatchGrid) -> Tensor {
        let m = self.norm_out.forward(cond_silu).chunk(2, 1);
        let x = modulate(&layer_norm(x), &m[1], &m[0]);
        let tokens = self.proj_out.forward(&x);
        unpatchify(
            &tokens,
            grid,
            self.cfg.patch_size.map(|p| p as i64),
            self.cfg.out_channels as i64,
        )
    }

    /// Number of blocks to run for these taps: the deepest tap, or all of them for the output.
    pub(crate) fn last_block_needed(&self, taps: &[usize], with_output: bool) -> Result<usize> {
        let depth = self.cfg.depth;
        if let Some(&bad) = taps.iter().find(|&&k| k == 0 || k > depth) {
            return Err(MmditError::Input {
                argument: "taps",
                expected: format!("block numbers in 1..={depth} (1-based), got {bad}"),
                got: taps.iter().map(|&k| k as i64).collect(),
            });
        }
        if !with_output && taps.is_empty() {
            return Err(MmditError::Input {
                argument: "taps",
                expected: "at least one tap when the output is not requested".into(),
                got: vec![],
            });
        }
        Ok(if with_output {
            depth
        } else {
            taps.iter().copied().max().unwrap_or(depth)
        })
    }

    /// `t` must be `[B]`, `[1]` or a scalar; returns it as `[B]` f32.
    pub(crate) fn check_time(&self, t: &Tensor, batch: i64) -> Result<Tensor> {
        let n = t.numel() as i64;
        if t.dim() > 1 || (n != batch && n != 1) {
            return Err(input_error("t", format!("[{batch}] or a single value"), t));
        }
        Ok(t.to_kind(Kind::Float).reshape([-1]).expand([batch], false))
    }
}

fn input_error(argument: &'static str, expected: impl Into<String>, got: &Tensor) -> MmditError {
    MmditError::Input {
        argument,
        expected: expected.into(),
        got: got.size(),
    }
}
