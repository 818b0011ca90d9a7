//! `Model`: a model of either family behind the interface the loop, the samplers and the
//! discriminator use.

use std::path::Path;

use tch::{nn, Tensor};

use super::ModelConfig;
use crate::error::{config_error, Result};
use crate::model::{Mmdit, TapOutput};
use crate::wan::WanTransformer;

/// A model of either family, with the interface the loop, the samplers and the discriminator
/// use. Variable names are the family's diffusers names.
#[derive(Debug)]
pub struct Model {
    cfg: ModelConfig,
    net: Network,
}

#[derive(Debug)]
enum Network {
    Mmdit(Mmdit),
    Wan(WanTransformer),
}

impl From<Mmdit> for Model {
    fn from(m: Mmdit) -> Self {
        Self {
            cfg: ModelConfig::Mmdit(m.config().clone()),
            net: Network::Mmdit(m),
        }
    }
}

impl From<WanTransformer> for Model {
    fn from(m: WanTransformer) -> Self {
        Self {
            cfg: ModelConfig::Wan(m.config().clone()),
            net: Network::Wan(m),
        }
    }
}

impl Model {
    /// Creates the model's variables under `p` (usually `vs.root()`), after validating `cfg`.
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Result<Self> {
        Ok(match cfg {
            ModelConfig::Mmdit(c) => Mmdit::new(p, c)?.into(),
            ModelConfig::Wan(c) => WanTransformer::new(p, c)?.into(),
        })
    }

    /// Loads a diffusers `transformer/` directory of either family into `vs` (strictly: every
    /// tensor present with its shape, no extra ones).
    pub fn from_diffusers_dir(vs: &nn::VarStore, dir: &Path) -> Result<Self> {
        Ok(match ModelConfig::from_diffusers_dir(dir)? {
            ModelConfig::Mmdit(_) => Mmdit::from_diffusers_dir(vs, dir)?.into(),
            ModelConfig::Wan(_) => WanTransformer::from_diffusers_dir(vs, dir)?.into(),
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The MMDiT, if this is one.
    pub fn as_mmdit(&self) -> Option<&Mmdit> {
        match &self.net {
            Network::Mmdit(m) => Some(m),
            Network::Wan(_) => None,
        }
    }

    /// Writes the model (weights `vs`) as a diffusers `transformer/` directory, sharded above
    /// `max_shard_bytes`. Wan only: an MMDiT with video patches and 3D RoPE is no diffusers
    /// class.
    pub fn save_diffusers_dir(
        &self,
        vs: &nn::VarStore,
        dir: &Path,
        max_shard_bytes: u64,
    ) -> Result<()> {
        match &self.net {
            Network::Wan(m) => m.save_diffusers_dir(vs, dir, max_shard_bytes),
            Network::Mmdit(_) => Err(config_error(
                "family",
                "is \"mmdit\": only Wan models are written as diffusers directories",
            )),
        }
    }

    /// The model's output at `(x_t, t, c)` (see [`Mmdit::forward`]): latents `[B, C, T, H, W]`,
    /// `t` `[B]` (or one value) in [0, 1], text tokens `[B, L, context_dim]`, `pooled`
    /// `[B, pooled_dim]` (unused by Wan).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        match &self.net {
            Network::Mmdit(m) => m.forward(x, t, context, pooled),
            Network::Wan(m) => m.forward(x, t, context),
        }
    }

    /// The visual tokens `[B, N, D]` after blocks `taps` (1-based) and, with `with_output`,
    /// the output; without it the forward stops after the deepest tap.
    pub fn forward_with_taps(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        taps: &[usize],
        with_output: bool,
    ) -> Result<TapOutput> {
        match &self.net {
            Network::Mmdit(m) => m.forward_with_taps(x, t, context, pooled, taps, with_output),
            Network::Wan(m) => m.forward_with_taps(x, t, context, taps, with_output),
        }
    }

    /// [`forward_with_taps`](Self::forward_with_taps), `loss_fn` on its result and the
    /// backward pass with each block's activations recomputed instead of stored; gradients
    /// accumulate into the parameters as a plain backward would (none reach the inputs).
    /// Returns the detached loss.
    // The arguments of `forward_with_taps` plus the loss closure.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_recompute<F>(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        taps: &[usize],
        with_output: bool,
        loss_fn: F,
    ) -> Result<Tensor>
    where
        F: FnOnce(&TapOutput) -> Tensor,
    {
        match &self.net {
            Network::Mmdit(m) => {
                m.backward_with_recompute(x, t, context, pooled, taps, with_output, loss_fn)
            }
            Network::Wan(m) => m.backward_with_recompute(x, t, context, taps, with_output, loss_fn),
        }
    }
}
