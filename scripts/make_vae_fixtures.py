"""Reference fixtures for apt-vae's parity tests, made with diffusers' own AutoencoderKLWan
(the Wan 2.1 video VAE) and AutoencoderKL (the SD3 / FLUX image VAE).

Run by `cargo xtask fixtures` (which installs the pinned diffusers into the project's torch
virtual environment). Under the output directory it writes, per model,

  <model>/config.json, <model>/diffusion_pytorch_model.safetensors   (save_pretrained, as is)

and per case a file `<model>-<case>.safetensors` with the layout `apt vae parity` reads:

  sample       the input, [B, 3, T, H, W] (video) or [B, 3, H, W] (image), in [-1, 1]
  latent_mean  the encoder's posterior mean (unnormalised)
  decoded      the decoder's output for `latent_mean`
  tile_sample_min, tile_sample_stride   (optional, int64 [h, w]) decode with tiling

Small random models (< 1 MB each) whose every parameter is perturbed (norm scales included) so
no term hides behind a default, scaled so that the clamped decoder output is mostly inside
(-1, 1). Deterministic for a given torch/diffusers version.
"""

import argparse
import os

import diffusers
import torch
from diffusers import AutoencoderKL, AutoencoderKLWan
from safetensors.torch import save_file

SEED = 20250108


def perturb(model: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def save_case(out_dir, name, sample, mean, decoded, extra=None):
    tensors = {
        "sample": sample.contiguous(),
        "latent_mean": mean.contiguous(),
        "decoded": decoded.contiguous(),
    }
    tensors.update(extra or {})
    meta = {"diffusers": diffusers.__version__, "torch": torch.__version__, "case": name}
    save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"), metadata=meta)
    clamped = (decoded.abs() >= 1.0).float().mean().item()
    print(
        f"{name}: sample {tuple(sample.shape)} -> latent {tuple(mean.shape)}, "
        f"|latent| max {mean.abs().max().item():.3f}, |decoded| max {decoded.abs().max().item():.3f}, "
        f"clamped {100 * clamped:.1f}%"
    )


def wan(out_dir: str) -> None:
    torch.manual_seed(SEED)
    model = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        # As Wan 2.1: no attention in the down blocks (diffusers 0.42 cannot run any there), the
        # mid blocks' attention only.
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, -0.4],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()
    perturb(model, 0.02)
    model.save_pretrained(os.path.join(out_dir, "wan"), safe_serialization=True)

    def run(sample):
        with torch.no_grad():
            mean = model.encode(sample).latent_dist.mean
            decoded = model.decode(mean).sample
        return mean, decoded

    # 1 + 4k frames, batch 2, non-square (24 x 40 → latent 3 x 5).
    video = torch.rand(2, 3, 9, 24, 40) * 2 - 1
    save_case(out_dir, "wan-video", video, *run(video))
    # One frame: an image through the video VAE.
    image = torch.rand(1, 3, 1, 16, 16) * 2 - 1
    save_case(out_dir, "wan-image", image, *run(image))
    # Tiled decoding (tiles of 32 x 32 pixels every 16 x 24, so tiles overlap and blend).
    tiled = torch.rand(1, 3, 5, 48, 64) * 2 - 1
    with torch.no_grad():
        mean = model.encode(tiled).latent_dist.mean
        model.enable_tiling(
            tile_sample_min_height=32,
            tile_sample_min_width=32,
            tile_sample_stride_height=16,
            tile_sample_stride_width=24,
        )
        decoded = model.decode(mean).sample
        model.disable_tiling()
    extra = {
        "tile_sample_min": torch.tensor([32, 32], dtype=torch.int64),
        "tile_sample_stride": torch.tensor([16, 24], dtype=torch.int64),
    }
    save_case(out_dir, "wan-tiled", tiled, mean, decoded, extra)


def kl(out_dir: str, name: str, use_quant_conv: bool) -> None:
    torch.manual_seed(SEED + 1)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=use_quant_conv,
    ).eval()
    perturb(model, 0.02)
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    image = torch.rand(2, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        mean = model.encode(image).latent_dist.mean
        decoded = model.decode(mean).sample
    save_case(out_dir, f"{name}-image", image, mean, decoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    wan(args.out)
    kl(args.out, "kl-sd3", use_quant_conv=False)
    kl(args.out, "kl-quant", use_quant_conv=True)


if __name__ == "__main__":
    main()
