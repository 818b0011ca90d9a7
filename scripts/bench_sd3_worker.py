"""PyTorch-eager side of `cargo xtask bench model`: diffusers' SD3Transformer2DModel on CPU.

Builds the benchmark model (random weights, seeded), saves it with save_pretrained and the
inputs as safetensors into --dir (the Rust worker loads exactly these), warms up, prints
`ready`, then answers commands on stdin, one per line:

  fwd K     K forward passes under no_grad           -> `times <ms> <ms> ...`
  train K   K forward+backward passes (MSE to zero)  -> `times <ms> <ms> ...`
  quit
"""

import os
import sys

import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_worker_loop import serve  # noqa: E402

SIZES = {
    # (layers, heads, head_dim, text width, pooled width, latent [B, C, H, W], text tokens, sample, max)
    "tiny": (3, 2, 16, 32, 32, (2, 4, 16, 16), 8, 16, 16),
    "small": (6, 3, 64, 384, 384, (2, 4, 32, 32), 16, 32, 16),
}


def build(size: str, out: str):
    layers, heads, hd, text, pooled, shape, tokens, sample, max_size = SIZES[size]
    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=sample, patch_size=2, in_channels=shape[1], num_layers=layers,
        attention_head_dim=hd, num_attention_heads=heads, joint_attention_dim=text,
        caption_projection_dim=heads * hd, pooled_projection_dim=pooled,
        out_channels=shape[1], pos_embed_max_size=max_size,
    )
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    inputs = {
        "hidden_states": torch.randn(*shape),
        "encoder_hidden_states": torch.randn(shape[0], tokens, text),
        "pooled_projections": torch.randn(shape[0], pooled),
        "timestep": torch.rand(shape[0]) * 1000,
    }
    save_file(inputs, os.path.join(out, "inputs.safetensors"))
    return model, inputs


if __name__ == "__main__":
    serve(SIZES, build)
