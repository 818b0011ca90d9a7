"""diffusers' side of `cargo xtask bench vae`: the same VAE directories and inputs as `apt vae
speed`, timed the same way (one warm-up, median of the repeats, fp32, no gradients).

  bench_vae.py make --out DIR      Wan 2.1 (AutoencoderKLWan) and SD3 (AutoencoderKL) VAEs at
                                   their released sizes with random weights, save_pretrained
                                   into DIR/wan2.1 and DIR/sd3 (no download needed)
  bench_vae.py speed --diffusers DIR --shape B,T,H,W [--repeats N] [--threads N]
                                   one JSON line per direction (encode, decode)
"""

import argparse
import json
import os
import statistics
import time

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan


def make(out: str) -> None:
    torch.manual_seed(0)
    AutoencoderKLWan().eval().save_pretrained(os.path.join(out, "wan2.1"), safe_serialization=True)
    AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval().save_pretrained(os.path.join(out, "sd3"), safe_serialization=True)


def timed(repeats: int, f) -> float:
    f()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(directory: str, shape: list[int], repeats: int) -> None:
    b, t, h, w = shape
    config = json.load(open(os.path.join(directory, "config.json")))
    cls = config["_class_name"]
    torch.manual_seed(0)
    with torch.no_grad():
        if cls == "AutoencoderKLWan":
            vae = AutoencoderKLWan.from_pretrained(directory).eval()
            x = torch.rand(b, 3, t, h, w) * 2 - 1
            frames = b * t
        else:
            vae = AutoencoderKL.from_pretrained(directory).eval()
            x = torch.rand(b, 3, h, w) * 2 - 1
            frames = b
        z = vae.encode(x).latent_dist.mean
        enc = timed(repeats, lambda: vae.encode(x).latent_dist.mean)
        dec = timed(repeats, lambda: vae.decode(z).sample)
    for direction, s in (("encode", enc), ("decode", dec)):
        print(json.dumps({
            "impl": "diffusers", "class": cls, "direction": direction, "shape": shape,
            "seconds": s, "frames_per_s": frames / s, "threads": torch.get_num_threads(),
        }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--diffusers", required=True)
    s.add_argument("--shape", required=True)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.command == "make":
        make(args.out)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        speed(args.diffusers, [int(v) for v in args.shape.split(",")], args.repeats)


if __name__ == "__main__":
    main()
