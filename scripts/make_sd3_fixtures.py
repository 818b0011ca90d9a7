"""Reference fixtures for apt-mmdit's parity tests, made with diffusers' own SD3Transformer2DModel.

Run by `cargo xtask fixtures` (which installs the pinned diffusers into the project's torch
virtual environment). For each variant it writes, under the output directory:

  <name>/config.json, <name>/diffusion_pytorch_model.safetensors   (save_pretrained, as is)
  <name>.io.safetensors   inputs named after the forward's arguments (hidden_states,
                          encoder_hidden_states, pooled_projections, timestep) and the
                          expected output `sample`

Small random models (< 1 MB each), non-square latents, an odd number of text tokens and two
different timesteps. Deterministic for a given torch/diffusers version.
"""

import argparse
import os

import diffusers
import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import save_file

VARIANTS = {
    "sd3-plain": dict(qk_norm=None),
    "sd3-qknorm": dict(qk_norm="rms_norm"),
}


def make(name: str, out_dir: str, qk_norm) -> None:
    torch.manual_seed(20250108)
    model = SD3Transformer2DModel(
        sample_size=16,  # base grid 8 patches: coordinates are scaled by 8/12 in the table
        patch_size=2,
        in_channels=4,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=40,
        caption_projection_dim=32,
        pooled_projection_dim=24,
        out_channels=4,
        pos_embed_max_size=12,
        qk_norm=qk_norm,
    ).eval()
    # Perturb every parameter (norm scales included) so no term can hide behind a default.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)

    inputs = {
        "hidden_states": torch.randn(2, 4, 12, 20),  # 6 x 10 patches
        "encoder_hidden_states": torch.randn(2, 7, 40),
        "pooled_projections": torch.randn(2, 24),
        "timestep": torch.tensor([333.3, 871.25]),
    }
    with torch.no_grad():
        sample = model(**inputs).sample
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors["sample"] = sample.contiguous()
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "variant": name}
    save_file(tensors, os.path.join(out_dir, f"{name}.io.safetensors"), metadata=meta)
    print(f"{name}: output {tuple(sample.shape)}, |sample| max {sample.abs().max().item():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for name, kwargs in VARIANTS.items():
        make(name, args.out, **kwargs)


if __name__ == "__main__":
    main()
