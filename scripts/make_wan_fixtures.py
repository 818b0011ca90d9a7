"""Reference fixtures for apt-mmdit's Wan 2.1 parity tests, made with diffusers' own
WanTransformer3DModel.

Run by `cargo xtask fixtures` (which installs the pinned diffusers into the project's torch
virtual environment). For each variant it writes, under the output directory:

  <name>/config.json, <name>/diffusion_pytorch_model.safetensors   (save_pretrained, as is)
  <name>.io.safetensors   inputs named after the forward's arguments (hidden_states,
                          encoder_hidden_states, timestep) and the expected output `sample`

and, for the released sizes, the key set and shapes of a meta-device model:

  wan2.1-1.3b.keys.json, wan2.1-14b.keys.json   {"name": [shape], ...}

Variants: diffusers' own test config (2 layers, 2 heads of 12, 4 channels in and out, text
width 16, ffn 32), and a second with 3 latent frames, non-square latents, batch 2 and two
timesteps. Every parameter is perturbed so that no term hides behind a default (norm scales
of one, zero biases). Deterministic for a given torch/diffusers version.
"""

import argparse
import json
import os

import diffusers
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

# diffusers' tests/models/transformers/test_models_transformer_wan.py
TEST_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)

VARIANTS = {
    # name: (config changes, hidden_states shape, text tokens, timesteps)
    "wan-test": ({}, (1, 4, 1, 16, 16), 12, [493.0]),
    "wan-video": (dict(num_layers=3), (2, 4, 3, 12, 20), 9, [271.5, 903.0]),
}

RELEASED = {
    "wan2.1-1.3b": dict(
        num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30,
        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2),
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ),
    "wan2.1-14b": dict(
        num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40,
        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, patch_size=(1, 2, 2),
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ),
}


def make(name: str, out_dir: str) -> None:
    changes, shape, tokens, timesteps = VARIANTS[name]
    torch.manual_seed(20250316)
    model = WanTransformer3DModel(**{**TEST_CONFIG, **changes}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    inputs = {
        "hidden_states": torch.randn(*shape),
        "encoder_hidden_states": torch.randn(shape[0], tokens, model.config.text_dim),
        "timestep": torch.tensor(timesteps),
    }
    with torch.no_grad():
        sample = model(**inputs).sample
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors["sample"] = sample.contiguous()
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "variant": name}
    save_file(tensors, os.path.join(out_dir, f"{name}.io.safetensors"), metadata=meta)
    print(f"{name}: output {tuple(sample.shape)}, |sample| max {sample.abs().max().item():.4f}")


def keys(name: str, out_dir: str) -> None:
    with torch.device("meta"):
        model = WanTransformer3DModel(**RELEASED[name])
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    total = sum(v.numel() for v in model.state_dict().values())
    with open(os.path.join(out_dir, f"{name}.keys.json"), "w") as f:
        json.dump({"parameters": total, "tensors": state}, f, indent=0, sort_keys=True)
    print(f"{name}: {total:,} parameters, {len(state)} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for name in VARIANTS:
        make(name, args.out)
    for name in RELEASED:
        keys(name, args.out)


if __name__ == "__main__":
    main()
