//! Activation recomputation ("gradient checkpointing") per block.
//!
//! libtorch's C++ API offers no checkpoint function, so the backward pass is driven by hand:
//!
//! 1. embed the inputs (with grad) and run every block under `no_grad`, keeping only each
//!    block's inputs;
//! 2. rebuild the head and the taps on detached leaves, evaluate the caller's loss and
//!    backpropagate it down to those leaves;
//! 3. walk the blocks backwards: recompute block `i` with grad from its saved input, and
//!    backpropagate `⟨out, ∂L/∂out⟩`, which yields `∂L/∂in` and accumulates the block's
//!    parameter gradients;
//! 4. finish through the embeddings.
//!
//! Peak activation memory drops from every block's internals to one block's internals plus
//! one `[B, N+L, D]` input per block. Gradients equal the plain backward (tested).

use tch::Tensor;

use crate::error::Result;
use crate::model::{Mmdit, TapOutput, TIMESTEP_SCALE};
use crate::sharding::{self, BlockUse};

/// `Σ ⟨value, grad⟩` over the pairs whose gradient exists: backpropagating it hands `grad` to
/// `value`'s graph, accumulating into leaves exactly like `value.backward(grad)`.
pub(crate) fn surrogate(pairs: &[(&Tensor, &Tensor)]) -> Option<Tensor> {
    pairs
        .iter()
        .filter(|(_, g)| g.defined())
        .map(|(v, g)| (*v * *g).sum(v.kind()))
        .reduce(|a, b| a + b)
}

/// A detached copy that requires grad: a cut point in the graph.
pub(crate) fn leaf(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(true)
}

impl Mmdit {
    /// Runs the forward of [`Mmdit::forward_with_taps`], evaluates `loss_fn` on its result and
    /// backpropagates, recomputing each block's activations instead of storing them.
    ///
    /// Parameter gradients are accumulated into the variables' `.grad` exactly as
    /// `loss.backward()` after a plain forward would. Gradients do not flow into the inputs
    /// `latents`, `context`, `pooled` (only into the model). Shapes are those of
    /// [`Mmdit::forward_with_taps`]; `loss_fn` must return a scalar. Returns the detached loss.
    // The arguments of `forward_with_taps` plus the loss closure.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_recompute<F>(
        &self,
        latents: &Tensor,
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
        let last = self.last_block_needed(taps, with_output)?;
        let t1000 =
            self.check_time(t, latents.size().first().copied().unwrap_or(0))? * TIMESTEP_SCALE;
        let e = self.embed(latents, &t1000, context, pooled)?;
        let blocks = &self.blocks()[..last];

        // 1. Forward without a graph, saving each block's inputs.
        let mut inputs: Vec<(Tensor, Tensor)> = Vec::with_capacity(last);
        let (mut x, mut ctx) = (e.x.detach(), e.ctx.detach());
        let tags = self.block_tags();
        tch::no_grad(|| -> Result<()> {
            let cond_silu = e.cond.silu();
            for (block, tag) in blocks.iter().zip(tags) {
                sharding::before_block(tag)?;
                let (nx, nctx) = block.forward(&x, &ctx, &cond_silu, e.rope.as_ref());
                sharding::after_block(tag, BlockUse::Forward { graph: false })?;
                inputs.push((x.shallow_clone(), ctx.shallow_clone()));
                x = nx;
                ctx = nctx.unwrap_or(ctx.shallow_clone());
            }
            Ok(())
        })?;

        // 2. Head and taps on leaves, then the caller's loss.
        // The conditioning vector is a leaf too; each use builds its own `silu` node, since
        // every backward below frees the graph it ran through.
        let cond = leaf(&e.cond);
        let outs: Vec<Tensor> = (0..last)
            .map(|i| {
                if i + 1 == last {
                    leaf(&x)
                } else {
                    leaf(&inputs[i + 1].0)
                }
            })
            .collect();
        let output = with_output.then(|| self.head(&outs[last - 1], &cond.silu(), e.grid));
        let tapped = TapOutput {
            output,
            taps: taps.iter().map(|&k| outs[k - 1].shallow_clone()).collect(),
        };
        let loss = loss_fn(&tapped);
        loss.backward();
        drop(tapped);

        // 3. Blocks in reverse, each recomputed with grad.
        let mut grad_x = Tensor::new();
        let mut grad_ctx = Tensor::new();
        for (i, block) in blocks.iter().enumerate().rev() {
            let tap_grad = outs[i].grad();
            grad_x = match (grad_x.defined(), tap_grad.defined()) {
                (true, true) => grad_x + tap_grad,
                (false, _) => tap_grad,
                (true, false) => grad_x,
            };
            let (x_in, ctx_in) = (leaf(&inputs[i].0), leaf(&inputs[i].1));
            sharding::before_block(&tags[i])?;
            let (x_out, ctx_out) = block.forward(&x_in, &ctx_in, &cond.silu(), e.rope.as_ref());
            let mut pairs = vec![(&x_out, &grad_x)];
            if let Some(ctx_out) = &ctx_out {
                pairs.push((ctx_out, &grad_ctx));
            }
            if let Some(s) = surrogate(&pairs) {
                s.backward();
            }
            drop((x_out, ctx_out));
            sharding::after_block(&tags[i], BlockUse::Backward)?;
            grad_x = x_in.grad();
            grad_ctx = ctx_in.grad();
        }

        // 4. Embeddings: patch tokens, text tokens and the conditioning vector.
        let grad_cond = cond.grad();
        if let Some(s) = surrogate(&[(&e.x, &grad_x), (&e.ctx, &grad_ctx), (&e.cond, &grad_cond)]) {
            if s.requires_grad() {
                s.backward();
            }
        }
        Ok(loss.detach())
    }
}
