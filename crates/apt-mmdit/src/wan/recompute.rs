//! Activation recomputation for the Wan transformer, as [`crate::recompute`] does it for the
//! MMDiT: run the blocks without a graph keeping each block's input, evaluate the caller's loss
//! on leaves, then walk the blocks backwards recomputing each one with a graph and handing the
//! gradient down; finish through the embeddings. Gradients equal the plain backward (tested).

use tch::Tensor;

use super::model::WanTransformer;
use crate::error::Result;
use crate::model::TapOutput;
use crate::model::TIMESTEP_SCALE;
use crate::recompute::{leaf, surrogate};
use crate::sharding::{self, BlockUse};

impl WanTransformer {
    /// Runs the forward of [`WanTransformer::forward_with_taps`] (`t` in [0, 1]), evaluates
    /// `loss_fn` on its result and backpropagates, recomputing each block's activations instead
    /// of storing them. Parameter gradients accumulate as `loss.backward()` after a plain
    /// forward would; no gradient flows into the inputs. Returns the detached loss.
    pub fn backward_with_recompute<F>(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        taps: &[usize],
        with_output: bool,
        loss_fn: F,
    ) -> Result<Tensor>
    where
        F: FnOnce(&TapOutput) -> Tensor,
    {
        let last = self.last_block_needed(taps, with_output);
        let e = self.embed(x, &(t * TIMESTEP_SCALE), context, taps)?;
        let blocks = &self.blocks()[..last];

        // 1. Forward without a graph, saving each block's input.
        let mut inputs: Vec<Tensor> = Vec::with_capacity(last);
        let mut h = e.tokens.detach();
        let (ctx, modulation) = (leaf(&e.context), leaf(&e.modulation));
        let tags = self.block_tags();
        tch::no_grad(|| -> Result<()> {
            for (block, tag) in blocks.iter().zip(tags) {
                sharding::before_block(tag)?;
                let next = block.forward(&h, &ctx, &modulation, &e.rope);
                sharding::after_block(tag, BlockUse::Forward { graph: false })?;
                inputs.push(std::mem::replace(&mut h, next));
            }
            Ok(())
        })?;

        // 2. The head and the taps on leaves, then the caller's loss.
        let temb = leaf(&e.temb);
        let outs: Vec<Tensor> = (0..last)
            .map(|i| match inputs.get(i + 1) {
                Some(next) => leaf(next),
                None => leaf(&h),
            })
            .collect();
        let output =
            with_output.then(|| self.head(&outs[last - 1], &temb, e.grid, self.compute_kind()));
        let tapped = TapOutput {
            taps: taps.iter().map(|&k| outs[k - 1].shallow_clone()).collect(),
            output,
        };
        let loss = loss_fn(&tapped);
        loss.backward();
        drop(tapped);

        // 3. Blocks in reverse, each recomputed with a graph.
        let mut grad = Tensor::new();
        for (i, block) in blocks.iter().enumerate().rev() {
            let tap_grad = outs[i].grad();
            grad = match (grad.defined(), tap_grad.defined()) {
                (true, true) => grad + tap_grad,
                (false, _) => tap_grad,
                (true, false) => grad,
            };
            let input = leaf(&inputs[i]);
            sharding::before_block(&tags[i])?;
            let out = block.forward(&input, &ctx, &modulation, &e.rope);
            if let Some(s) = surrogate(&[(&out, &grad)]) {
                s.backward();
            }
            drop(out);
            sharding::after_block(&tags[i], BlockUse::Backward)?;
            grad = input.grad();
        }

        // 4. The embeddings: patch tokens, text, the time embedding and its projection.
        let (g_ctx, g_mod, g_temb) = (ctx.grad(), modulation.grad(), temb.grad());
        let pairs = [
            (&e.tokens, &grad),
            (&e.context, &g_ctx),
            (&e.modulation, &g_mod),
            (&e.temb, &g_temb),
        ];
        if let Some(s) = surrogate(&pairs) {
            if s.requires_grad() {
                s.backward();
            }
        }
        Ok(loss.detach())
    }
}
