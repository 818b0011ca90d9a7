#!/usr/bin/env bash
# One lease on a lent GPU machine (torch preinstalled, no Rust, no network): the CUDA paths of
# the `apt` binary built here. Expects device-carry/ (git-ignored) to hold:
#   apt.xz           the release binary, stripped and xz-compressed
#   libs.tar.xz      the FFmpeg libraries it links and their dependencies (libs/*.so*)
#   smoke-cache/     caption embeddings of configs/smoke.toml (MiniLM is not carried)
#   demo-cache/      caption embeddings of configs/demo.toml
#   wan-tiny-cache/  an empty folder is enough (the UMT5 of assets/wan-tiny is in the repo)
# and writes reports and logs under $OUT. Usage (from the repo root): bash scripts/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/carried-libs
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
tar xJf device-carry/libs.tar.xz -C /tmp/carried-libs
# (All carried libraries are kept: checking the machine's ld cache missed some that its
# loader could not find.)
export LD_LIBRARY_PATH=$TORCH_LIB:/tmp/carried-libs/libs
APT=/tmp/apt
xz -dc device-carry/apt.xz > $APT
chmod +x $APT
{
  nvidia-smi -L
  python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)'
  ldd --version | head -1
  echo "carried libs kept: $(ls /tmp/carried-libs/libs | wc -l)"
  ldd $APT | grep "not found"
} 2>&1 | tee "$OUT/machine.txt"
$APT doctor 2>&1 | tee "$OUT/doctor.txt"
# name, config, extra --set overrides, time limit (s)
jobs=(
  "smoke|smoke|--set report.prompts=8|120"
  "wan-tiny|wan-tiny|--set precision=\"bf16\" --set apt.train.recompute=true|120"
  "demo-long|demo|--set pretrain.train.steps=6000 --set pretrain.train.checkpoint_every=1000|330"
)
for job in "${jobs[@]}"; do
  IFS='|' read -r name config extra limit <<< "$job"
  start=$SECONDS
  timeout "$limit" $APT train --config configs/$config.toml --set device=cuda \
    --set out=/tmp/runs/$name --set text.cache=device-carry/$config-cache $extra \
    > "$OUT/$name.stdout" 2> "$OUT/$name.stderr"
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  mkdir -p "$OUT/$name"
  cp -r /tmp/runs/$name/{report.md,metrics.json,log.txt,plots,samples} "$OUT/$name/" 2>/dev/null
  for s in pretrain distill apt; do
    cp /tmp/runs/$name/$s/report.json "$OUT/$name/$s-report.json" 2>/dev/null
    cp /tmp/runs/$name/$s/metrics.jsonl "$OUT/$name/$s-metrics.jsonl" 2>/dev/null
  done
done
# NCCL through torchrun: a group of one GPU (the machine has one) on the smoke pipeline, fully
# sharded with recomputation in bf16.
start=$SECONDS
timeout 180 python3 -m torch.distributed.run --standalone --nproc-per-node 1 --no-python \
  $APT train --config configs/smoke.toml --set device=cuda --set 'dist.backend="nccl"' \
  --set 'precision="bf16"' --set 'apt.train.shard="full"' --set apt.train.recompute=true \
  --set out=/tmp/runs/nccl --set text.cache=device-carry/smoke-cache \
  > "$OUT/nccl.stdout" 2> "$OUT/nccl.stderr"
echo "nccl (torchrun, 1 GPU): exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
tail -n 5 "$OUT"/*.stderr
