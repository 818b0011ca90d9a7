"""PyTorch-eager side of `cargo xtask bench wan`: diffusers' WanTransformer3DModel on CPU.

Builds the benchmark model (random weights, seeded, every weight perturbed so that no output
layer is zero), saves it with save_pretrained and the inputs as safetensors into --dir (the
Rust worker loads exactly these), warms up, prints `ready`, then answers commands on stdin, one
per line:

  fwd K     K forward passes under no_grad           -> `times <ms> <ms> ...`
  train K   K forward+backward passes (MSE to zero)  -> `times <ms> <ms> ...`
  quit
"""

import os
import sys

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_worker_loop import serve  # noqa: E402

SIZES = {
    # (layers, heads, head_dim, ffn, text width, latent [B, C, T, H, W], text tokens)
    "tiny": (2, 2, 12, 32, 16, (1, 4, 2, 16, 16), 12),
    "small": (4, 6, 64, 1536, 256, (2, 16, 4, 16, 16), 32),
}


def build(size: str, out: str):
    layers, heads, hd, ffn, text, shape, tokens = SIZES[size]
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=hd,
        in_channels=shape[1], out_channels=shape[1], text_dim=text, freq_dim=256, ffn_dim=ffn,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=1024,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    inputs = {
        "hidden_states": torch.randn(*shape),
        "encoder_hidden_states": torch.randn(shape[0], tokens, text),
        "timestep": torch.rand(shape[0]) * 1000,
    }
    save_file(inputs, os.path.join(out, "inputs.safetensors"))
    return model, inputs


if __name__ == "__main__":
    serve(SIZES, build)
