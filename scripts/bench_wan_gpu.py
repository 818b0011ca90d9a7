"""PyTorch-eager side of the Wan 2.1 one-step latency in scripts/gpu_bench.sh: diffusers'
WanTransformer3DModel with the released 1.3B (or 14B) configuration, random weights in bf16 on
the GPU, one forward at timestep 1000 on the latent of 81 frames at 480×832 ([16, 21, 60, 104])
with 512 text tokens of width 4096, batch 1 — what `gpu_bench wan-latency` times for ours.
Prints one JSON line: median seconds per forward and peak memory.

Usage: python3 scripts/bench_wan_gpu.py [--size 1.3b|14b] [--warmup 2] [--iters 5]
"""

import argparse
import json
import time

import torch
from diffusers import WanTransformer3DModel

SIZES = {"1.3b": (12, 8960, 30), "14b": (40, 13824, 40)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, default="1.3b")
    ap.add_argument("--latent", default="16,21,60,104")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heads, ffn, layers = SIZES[args.size]
    torch.manual_seed(0)
    with torch.device(dev):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128,
            in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn,
            num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        ).to(torch.bfloat16).eval()
    c, t, h, w = (int(v) for v in args.latent.split(","))
    x = torch.randn(1, c, t, h, w, device=dev, dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)
    step = torch.full((1,), 1000.0, device=dev)

    def run() -> None:
        with torch.no_grad():
            model(hidden_states=x, timestep=step, encoder_hidden_states=text)

    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({
        "bench": "wan-diffusers", "size": args.size, "device": str(dev),
        "latent": [c, t, h, w], "text_tokens": 512, "batch": 1,
        "seconds": times[len(times) // 2], "precision": "bf16",
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
        "diffusers": __import__("diffusers").__version__, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
