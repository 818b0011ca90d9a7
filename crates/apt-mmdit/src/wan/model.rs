//! `WanTransformer`: the Wan 2.1 text-to-video DiT (diffusers' `WanTransformer3DModel`) —
//! 3D patch embedding, timestep and text embeddings, the blocks, the modulated output
//! projection and unpatchify — with diffusers' variable names, loadable from its directories.

use std::path::Path;

use tch::{nn, nn::Module, Kind, Tensor};

use super::block::{layer_norm_f32, WanBlock};
use super::config::WanConfig;
use crate::embeddings::{timestep_features_of, unpatchify, PatchGrid};
use crate::error::{MmditError, Result};
use crate::lora::{linear, Linear};
use crate::model::{TapOutput, TIMESTEP_SCALE};
use crate::rope::RopeTable;
use crate::sharding::{self, BlockTag, BlockUse};
use crate::weights::{diffusers_weight_files, load_strict};

/// Two linears with an activation between (`linear_1`, `linear_2`).
#[derive(Debug)]
struct Mlp2 {
    linear_1: Linear,
    linear_2: Linear,
    tanh_gelu: bool,
}

impl Mlp2 {
    fn new(p: nn::Path, input: i64, width: i64, tanh_gelu: bool) -> Self {
        Self {
            linear_1: linear(&p / "linear_1", input, width, Default::default()),
            linear_2: linear(&p / "linear_2", width, width, Default::default()),
            tanh_gelu,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.linear_1.forward(x);
        let h = if self.tanh_gelu {
            h.gelu("tanh")
        } else {
            h.silu()
        };
        self.linear_2.forward(&h)
    }
}

/// What the blocks and the head of one forward take.
#[derive(Debug)]
pub(super) struct Embedded {
    /// Patch tokens `[B, N, D]`.
    pub tokens: Tensor,
    /// The time embedding `[B, D]` (the head's modulation).
    pub temb: Tensor,
    /// Its projection `[B, 6, D]`, f32 (the blocks' modulation).
    pub modulation: Tensor,
    /// The embedded text `[B, L, D]`.
    pub context: Tensor,
    /// The rotary table of the patch grid.
    pub rope: RopeTable,
    /// The patch grid.
    pub grid: PatchGrid,
}

/// The model. Variables: `patch_embedding.{weight,bias}`,
/// `condition_embedder.{time_embedder,text_embedder}.linear_{1,2}`,
/// `condition_embedder.time_proj`, `blocks.<i>.*`, `proj_out`, `scale_shift_table`.
#[derive(Debug)]
pub struct WanTransformer {
    cfg: WanConfig,
    patch_weight: Tensor,
    patch_bias: Tensor,
    time_embedder: Mlp2,
    time_proj: Linear,
    text_embedder: Mlp2,
    blocks: Vec<WanBlock>,
    /// Each block's identity for the sharding hooks.
    tags: Vec<BlockTag>,
    proj_out: Linear,
    scale_shift_table: Tensor,
}

impl WanTransformer {
    /// Creates the model's variables under `p` (usually `vs.root()`), after validating `cfg`.
    pub fn new(p: nn::Path, cfg: &WanConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size() as i64;
        let [pt, ph, pw] = cfg.patch_size.map(|v| v as i64);
        let c = cfg.in_channels as i64;
        let fan_in = (c * pt * ph * pw) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let emb = &p / "condition_embedder";
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight: (&p / "patch_embedding").var(
                "weight",
                &[d, c, pt, ph, pw],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            patch_bias: (&p / "patch_embedding").var(
                "bias",
                &[d],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            time_embedder: Mlp2::new(&emb / "time_embedder", cfg.freq_dim as i64, d, false),
            time_proj: linear(&emb / "time_proj", d, 6 * d, Default::default()),
            text_embedder: Mlp2::new(&emb / "text_embedder", cfg.text_dim as i64, d, true),
            blocks: (0..cfg.num_layers)
                .map(|i| WanBlock::new(&p / "blocks" / i, cfg))
                .collect(),
            tags: (0..cfg.num_layers)
                .map(|i| BlockTag::new(&(&p / "blocks" / i), "scale_shift_table"))
                .collect(),
            proj_out: linear(
                &p / "proj_out",
                d,
                cfg.patch_out_dim() as i64,
                Default::default(),
            ),
            scale_shift_table: p.var(
                "scale_shift_table",
                &[1, 2, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / (d as f64).sqrt(),
                },
            ),
        })
    }

    /// Builds the model on `vs` and loads a diffusers `transformer/` directory strictly
    /// (`config.json` and the weights, one file or the shards of its index).
    pub fn from_diffusers_dir(vs: &nn::VarStore, dir: &Path) -> Result<Self> {
        let cfg = WanConfig::from_diffusers_dir(dir)?;
        let model = Self::new(vs.root(), &cfg)?;
        load_strict(vs, &diffusers_weight_files(dir)?, dir)?;
        Ok(model)
    }

    /// Writes the model's weights `vs` and config as a diffusers `transformer/` directory
    /// (`WanTransformer3DModel.from_pretrained` loads it), sharded above `max_shard_bytes`
    /// (diffusers' default is 10 GB).
    pub fn save_diffusers_dir(
        &self,
        vs: &nn::VarStore,
        dir: &Path,
        max_shard_bytes: u64,
    ) -> Result<()> {
        crate::weights::save_diffusers_dir(vs, &self.cfg.to_diffusers_json(), dir, max_shard_bytes)
    }

    /// The names of the variables a model of `cfg` has (diffusers names, sorted), read off a
    /// model of the same depth two heads of 6 channels wide (the names do not depend on widths).
    pub fn parameter_names(cfg: &WanConfig) -> Result<Vec<String>> {
        let small = WanConfig {
            num_attention_heads: 2,
            attention_head_dim: 6,
            in_channels: 1,
            out_channels: 1,
            text_dim: 1,
            freq_dim: 2,
            ffn_dim: 1,
            ..cfg.clone()
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        Self::new(vs.root(), &small)?;
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// The model's output for latents `x` `[B, C, T, H, W]` at rectified-flow times `t` `[B]`
    /// (or one value) in [0, 1], text `context` `[B, L, text_dim]`: what diffusers'
    /// `WanTransformer3DModel` returns for `timestep = 1000·t` (the flow velocity).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.forward_diffusers(x, &(t * TIMESTEP_SCALE), context)
    }

    /// [`forward`](Self::forward) with diffusers' `timestep` on its 0..1000 scale.
    pub fn forward_diffusers(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let tapped = self.forward_with_taps_diffusers(x, timestep, context, &[], true)?;
        Ok(tapped.output.expect("the whole model ran"))
    }

    /// The tokens after blocks `taps` (1-based) and, with `with_output`, the output; without
    /// it the forward stops after the deepest tap. `t` in [0, 1] as in [`forward`](Self::forward).
    pub fn forward_with_taps(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        taps: &[usize],
        with_output: bool,
    ) -> Result<TapOutput> {
        self.forward_with_taps_diffusers(x, &(t * TIMESTEP_SCALE), context, taps, with_output)
    }

    fn forward_with_taps_diffusers(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        taps: &[usize],
        with_output: bool,
    ) -> Result<TapOutput> {
        let last = self.last_block_needed(taps, with_output);
        let e = self.embed(x, timestep, context, taps)?;
        let mut h = e.tokens.shallow_clone();
        let mut kept = Vec::with_capacity(taps.len());
        for (i, block) in self.blocks.iter().take(last).enumerate() {
            sharding::before_block(&self.tags[i])?;
            h = block.forward(&h, &e.context, &e.modulation, &e.rope);
            let graph = h.requires_grad();
            sharding::after_block(&self.tags[i], BlockUse::Forward { graph })?;
            if taps.contains(&(i + 1)) {
                kept.push((i + 1, h.shallow_clone()));
            }
        }
        let taps_out = taps
            .iter()
            .map(|k| {
                kept.iter()
                    .find(|(i, _)| i == k)
                    .map(|(_, t)| t.shallow_clone())
                    .expect("every tap was kept")
            })
            .collect();
        let output = with_output.then(|| self.head(&h, &e.temb, e.grid, self.compute_kind()));
        Ok(TapOutput {
            taps: taps_out,
            output,
        })
    }

    /// How many blocks a forward runs: all with the output, else up to the deepest tap.
    pub(super) fn last_block_needed(&self, taps: &[usize], with_output: bool) -> usize {
        if with_output {
            self.blocks.len()
        } else {
            taps.iter().copied().max().unwrap_or(0)
        }
    }

    /// The blocks.
    /// The blocks' identities for the sharding hooks, in order.
    pub fn block_tags(&self) -> &[BlockTag] {
        &self.tags
    }

    pub(super) fn blocks(&self) -> &[WanBlock] {
        &self.blocks
    }

    /// Patch tokens, the time embedding and its per-block projection, the embedded text and
    /// the rotary table: what the blocks and the head take (with a graph to the weights).
    pub(super) fn embed(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        taps: &[usize],
    ) -> Result<Embedded> {
        let (grid, b) = self.check_inputs(x, context, taps)?;
        // Inputs in the weights' precision (a bf16 model takes fp32 latents and text).
        let kind = self.compute_kind();
        let (x, context) = (&x.to_kind(kind), &context.to_kind(kind));
        let d = self.cfg.hidden_size() as i64;
        let rope = RopeTable::new(
            grid,
            0,
            self.cfg.rope_axes_dim(),
            10_000.0,
            kind,
            x.device(),
        );
        let stride = self.cfg.patch_size.map(|v| v as i64);
        let tokens = x
            .conv3d(
                &self.patch_weight,
                Some(&self.patch_bias),
                stride,
                [0, 0, 0],
                [1, 1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2)
            .contiguous();
        let timestep = timestep.expand([b], false);
        let features = timestep_features_of(&timestep, self.cfg.freq_dim as i64);
        let temb = self
            .time_embedder
            .forward(&features.to_kind(self.time_kind()))
            .to_kind(context.kind());
        let modulation = self
            .time_proj
            .forward(&temb.silu())
            .view([b, 6, d])
            .to_kind(Kind::Float);
        Ok(Embedded {
            tokens,
            temb,
            modulation,
            context: self.text_embedder.forward(context),
            rope,
            grid,
        })
    }

    /// The modulated output norm, projection and unpatchify of the last tokens `h`.
    pub(super) fn head(&self, h: &Tensor, temb: &Tensor, grid: PatchGrid, kind: Kind) -> Tensor {
        let m = (self.scale_shift_table.to_kind(Kind::Float)
            + temb.to_kind(Kind::Float).unsqueeze(1))
        .chunk(2, 1);
        let (shift, scale) = (&m[0], &m[1]);
        let normed =
            (layer_norm_f32(h, None, None, self.cfg.eps) * (scale + 1.0) + shift).to_kind(kind);
        let tokens = self.proj_out.forward(&normed);
        let patch = self.cfg.patch_size.map(|v| v as i64);
        unpatchify(&tokens, grid, patch, self.cfg.out_channels as i64)
    }

    /// The kind of the weights: what the blocks compute in and the output comes in.
    pub(super) fn compute_kind(&self) -> Kind {
        self.patch_weight.kind()
    }

    /// The kind of the time embedder's weights (diffusers casts the features to it).
    fn time_kind(&self) -> Kind {
        self.time_proj.ws.kind()
    }

    /// Checks shapes against the config; returns the patch grid and the batch size.
    fn check_inputs(
        &self,
        x: &Tensor,
        context: &Tensor,
        taps: &[usize],
    ) -> Result<(PatchGrid, i64)> {
        let bad = |argument: &'static str, expected: String, got: Vec<i64>| MmditError::Input {
            argument,
            expected,
            got,
        };
        let size = x.size();
        let [pt, ph, pw] = self.cfg.patch_size.map(|v| v as i64);
        let c = self.cfg.in_channels as i64;
        if size.len() != 5
            || size[1] != c
            || size[2] % pt != 0
            || size[3] % ph != 0
            || size[4] % pw != 0
        {
            return Err(bad(
                "latents",
                format!(
                    "[B, {c}, T, H, W] with T, H, W multiples of the patch {:?}",
                    self.cfg.patch_size
                ),
                size,
            ));
        }
        let grid = PatchGrid {
            t: size[2] / pt,
            h: size[3] / ph,
            w: size[4] / pw,
        };
        let most = self.cfg.rope_max_seq_len as i64;
        if grid.t > most || grid.h > most || grid.w > most {
            return Err(bad(
                "latents",
                format!("at most {most} patches along each axis (rope_max_seq_len)"),
                size,
            ));
        }
        let cs = context.size();
        if cs.len() != 3 || cs[0] != size[0] || cs[2] != self.cfg.text_dim as i64 {
            return Err(bad(
                "context",
                format!("[{}, L, {}]", size[0], self.cfg.text_dim),
                cs,
            ));
        }
        if let Some(&k) = taps.iter().find(|&&k| k == 0 || k > self.blocks.len()) {
            return Err(bad(
                "taps",
                format!("block numbers in 1..={}", self.blocks.len()),
                vec![k as i64],
            ));
        }
        Ok((grid, size[0]))
    }
}
