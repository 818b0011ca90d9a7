"""A random tiny Wan 2.1 text-to-video pipeline directory, saved by diffusers' own WanPipeline:
the layout of Wan-AI/Wan2.1-T2V-1.3B-Diffusers at toy sizes, so that `configs/wan-tiny.toml`
runs apt-rs's whole Wan path (teacher from a pipeline directory → distillation → APT →
evaluation → sample) on CPU in seconds. No download.

  model_index.json   WanPipeline
  transformer/       WanTransformer3DModel: 4 blocks, 2 heads × 12, ffn 32, text_dim 32,
                     patch 1×2×2, 4 latent channels; every weight perturbed (a fresh
                     diffusers model has zero output layers)
  text_encoder/      UMT5EncoderModel: d_model 32, 2 layers, 4 heads, gated-GELU
  tokenizer/         the Unigram tokenizer of make_umt5_fixture.py (appends </s>)
  vae/               AutoencoderKLWan: base_dim 8, z_dim 4, 4× time, 8× space
  scheduler/         UniPCMultistepScheduler, flow_shift 3.0 (Wan's 480p value)

Usage: python scripts/make_wan_tiny.py --out assets/wan-tiny   (what `cargo xtask fixtures` runs)
"""

import argparse
import os
import sys

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_umt5_fixture import tokenizer  # noqa: E402


def perturb(model: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    torch.manual_seed(20251207)
    torch.set_num_threads(1)
    scratch = os.path.join(args.out, ".scratch")
    fast = tokenizer(scratch)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(fast), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=20,
            feed_forward_proj="gated-gelu", dropout_rate=0.0,
        )
    ).eval()
    perturb(text_encoder, 0.05)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=4,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32,
    ).eval()
    perturb(transformer, 0.05)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0, 0.0, 0.0, 0.0], latents_std=[1.0, 1.0, 1.0, 1.0],
    ).eval()
    perturb(vae, 0.02)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        flow_shift=3.0,
    )
    pipe = WanPipeline(
        tokenizer=fast, text_encoder=text_encoder, transformer=transformer, vae=vae,
        scheduler=scheduler,
    )
    pipe.save_pretrained(args.out, safe_serialization=True)
    for name in os.listdir(scratch + "/tokenizer"):
        os.remove(os.path.join(scratch, "tokenizer", name))
    os.rmdir(os.path.join(scratch, "tokenizer"))
    os.rmdir(scratch)
    # diffusers' own pipeline draws from it: the directory is a working Wan pipeline.
    video = pipe(
        "a red circle moves right", height=32, width=32, num_frames=5, num_inference_steps=2,
        guidance_scale=1.0, output_type="pt",
    ).frames
    print(f"wan-tiny: {sum(p.numel() for p in transformer.parameters())} transformer "
          f"parameters, diffusers sample {tuple(video.shape)}")


if __name__ == "__main__":
    main()
