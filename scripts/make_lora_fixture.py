"""Reference fixture for apt-mmdit's LoRA: a PEFT adapter on diffusers' tiny Wan transformer,
saved by diffusers' own `WanPipeline.save_lora_weights`, and what diffusers computes after
`load_lora_adapter` of that file.

Run by `cargo xtask fixtures` after make_wan_fixtures.py (it reads its `wan-test/`). Writes,
under the output directory:

  wan-lora.safetensors     the adapter as diffusers saves it: transformer.<module>.lora_A/B
                           .weight, rank 4, lora_alpha 8 (scale 2) in the file's
                           `lora_adapter_metadata`; targets to_q, to_k, to_v, to_out.0,
                           ffn.net.2 (attn1 and attn2 of both blocks); random A and B
  wan-lora.io.safetensors  hidden_states, encoder_hidden_states, timestep; `sample_base` (the
                           model without the adapter) and `sample` (with it, loaded back by
                           diffusers from wan-lora.safetensors)

Usage: python scripts/make_lora_fixture.py --wan DIR/wan-test --out DIR
Deterministic for a given torch/diffusers/peft version.
"""

import argparse
import json
import os

import diffusers
import peft
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.2"]


def load(directory: str) -> WanTransformer3DModel:
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(directory))
    model.load_state_dict(load_file(os.path.join(directory, "diffusion_pytorch_model.safetensors")))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wan", required=True, help="make_wan_fixtures.py's wan-test directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(20251208)
    torch.set_num_threads(1)
    inputs = {
        "hidden_states": torch.randn(1, 4, 2, 16, 16),
        "encoder_hidden_states": torch.randn(1, 12, 16),
        "timestep": torch.tensor([420.0]),
    }
    base = load(args.wan)
    with torch.no_grad():
        sample_base = base(**inputs).sample
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    base.add_adapter(config)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    os.makedirs(args.out, exist_ok=True)
    WanPipeline.save_lora_weights(
        args.out,
        transformer_lora_layers=get_peft_model_state_dict(base),
        transformer_lora_adapter_metadata=config.to_dict(),
        weight_name="wan-lora.safetensors",
    )
    # What a pipeline's load_lora_weights does: read the file (and its metadata), load into
    # the transformer.
    fresh = load(args.wan)
    state, metadata = WanPipeline.lora_state_dict(
        os.path.join(args.out, "wan-lora.safetensors"), return_lora_metadata=True
    )
    WanPipeline.load_lora_into_transformer(state, transformer=fresh, metadata=metadata)
    with torch.no_grad():
        sample = fresh(**inputs).sample
        peft_sample = base(**inputs).sample
    assert torch.allclose(sample, peft_sample, atol=1e-6), "diffusers' reload differs from PEFT"
    save_file(
        {**inputs, "sample_base": sample_base.contiguous(), "sample": sample.contiguous()},
        os.path.join(args.out, "wan-lora.io.safetensors"),
        metadata={"diffusers": diffusers.__version__, "peft": peft.__version__,
                  "torch": torch.__version__, "targets": json.dumps(TARGETS)},
    )
    print(f"wan-lora: |sample - base| max {(sample - sample_base).abs().max().item():.4f}")


if __name__ == "__main__":
    main()
