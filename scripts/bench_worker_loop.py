"""What the PyTorch-eager bench workers share (scripts/bench_sd3_worker.py,
scripts/bench_wan_worker.py): the arguments, the timed step and the stdin protocol

  fwd K     K forward passes under no_grad           -> `times <ms> <ms> ...`
  train K   K forward+backward passes (MSE to zero)  -> `times <ms> <ms> ...`
  quit
"""

import argparse
import sys
import time

import torch


def step(model, inputs, mode: str) -> float:
    start = time.perf_counter()
    if mode == "fwd":
        with torch.no_grad():
            model(**inputs)
    else:
        model.zero_grad()
        out = model(**inputs).sample
        out.square().mean().backward()
    return (time.perf_counter() - start) * 1000.0


def serve(sizes, build) -> None:
    """Parses --size/--threads/--dir, builds the model with `build(size, dir)` (which saves it
    and the inputs for the Rust worker), warms up, prints `ready` and answers stdin."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sizes, default="small")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, inputs = build(args.size, args.dir)
    for mode in ("fwd", "train", "fwd", "train"):
        step(model, inputs, mode)
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        times = [step(model, inputs, parts[0]) for _ in range(int(parts[1]))]
        print("times " + " ".join(f"{t:.4f}" for t in times), flush=True)
