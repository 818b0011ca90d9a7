"""PyTorch-eager side of `cargo xtask bench gpu` (c): diffusers' SD3Transformer2DModel with
Stable Diffusion 3 Medium's configuration (random weights, bf16) on the GPU, one training
update as people run it — forward, MSE backward, fused AdamW — at the batch and latent of
`gpu_bench flow` (the `sd3-medium` preset: latent [16, 128, 128], 333 text tokens). Prints one
JSON line: median seconds per update, peak memory, and the attention kernels a profiled update
launched (names containing flash/efficient/fmha/cudnn/attention).

Usage: python3 scripts/bench_sd3_gpu.py [--batch 8] [--warmup 2] [--iters 5]
"""

import argparse
import json
import time

import torch
from diffusers import SD3Transformer2DModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
    ).to(dev, torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b = args.batch
    inputs = {
        "hidden_states": torch.randn(b, 16, 128, 128, device=dev, dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(b, 333, 4096, device=dev, dtype=torch.bfloat16),
        "pooled_projections": torch.randn(b, 2048, device=dev, dtype=torch.bfloat16),
        "timestep": torch.rand(b, device=dev) * 1000,
    }

    def update() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(**inputs).sample
        out.float().square().mean().backward()
        opt.step()

    for _ in range(args.warmup):
        update()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated()
    kernels = set()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        update()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        name = e.key.lower()
        if any(k in name for k in ("flash", "efficient", "fmha", "cudnn", "attention")):
            kernels.add(e.key[:120])
    times.sort()
    print(json.dumps({
        "bench": "diffusers-sd3-medium-train", "batch": b, "seconds": times[len(times) // 2],
        "peak_memory_gib": peak / 2**30, "attention_kernels": sorted(kernels),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
    }))


if __name__ == "__main__":
    main()
