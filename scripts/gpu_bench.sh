#!/usr/bin/env bash
# One lease on a lent GPU machine (torch preinstalled, no Rust, no network): the measurements of
# `cargo xtask bench gpu` (issue 13). `cargo xtask bench gpu` prepares device-carry/:
#   gpu_bench.xz   crates/apt-gan/examples/gpu_bench.rs, release, stripped, xz-compressed
#   wheels/        diffusers and the packages it needs (pip download), for the PyTorch side
# Run it through the device tool with carry ["device-carry"] and a 600 s limit:
#   bash scripts/gpu_bench.sh
# Writes $OUT/gpu-bench.jsonl (one JSON object per measurement), peak device memory per
# measurement (nvidia-smi, sampled every 50 ms, includes the CUDA context) and stderr logs.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
BIN=/tmp/gpu_bench
xz -dc device-carry/gpu_bench.xz > $BIN && chmod +x $BIN
{
  nvidia-smi -L
  python3 -c 'import sys,torch;print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  pip install -q --no-index --find-links device-carry/wheels diffusers 2>&1 | tail -2
} > "$OUT/machine.txt" 2>&1
measure() {
  local name=$1 limit=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem-$name.txt" &
  local sampler=$!
  local start=$SECONDS
  timeout "$limit" "$@" >> "$OUT/gpu-bench.jsonl" 2> "$OUT/$name.stderr"
  local rc=$?
  kill $sampler 2>/dev/null
  local peak=$(sort -n "$OUT/mem-$name.txt" | tail -1)
  echo "{\"bench\": \"$name\", \"exit\": $rc, \"wall_s\": $((SECONDS - start)), \"peak_device_mib\": ${peak:-null}}" >> "$OUT/gpu-bench.jsonl"
}
# (a) one-step latency, seaweed-8b at 720p 2 s
measure latency 150 $BIN latency
# (b) training updates, sd3-medium, bf16 (with and without recomputation), APT D+G with aR1
measure flow 120 $BIN flow --batch 8
measure flow-recompute 120 $BIN flow --batch 8 --recompute
measure apt 150 $BIN apt --batch 4
# (c) the same model in PyTorch eager (diffusers), same batch and latent
measure diffusers 120 python3 scripts/bench_sd3_gpu.py --batch 8
# (d) Wan 2.1 1.3B one-step latency at 480p, 81 frames, bf16: ours, then diffusers (issue 25)
measure wan-latency 120 $BIN wan-latency
measure wan-diffusers 120 python3 scripts/bench_wan_gpu.py --size 1.3b
cat "$OUT/gpu-bench.jsonl"
tail -n 3 "$OUT"/*.stderr
