#!/usr/bin/env bash
# PREPARED IN THE NINTH SESSION ON BRANCH fp8-swiglu-kernel (kind nvidia-h200, one GPU alone). Issue 5's closing
# note needs the time breakdown of today's default step (the last profile, call 19, predates CUDA graphs and the
# fused SwiGLU). Kernels inside CUDA graph replays appear in the profiler's trace as launched kernels do.
#  1. profiles, seed, micro-batch 16, 3 steps: fp8 delayed (the default: fused SwiGLU, CUDA graphs), bf16
#     (breakdown.json per run; the Chrome traces stay on the device: too large to bring back);
#  2. if the time is left: 1B bench, bf16 and fp8 (fused) with stock TorchAO's rows in the same call.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_profile; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=profile_fused.tar.gz
source benchmarks/scripts/lib_single.sh
gpu_log_start
profile profile-fp8 100 --precision fp8-delayed
profile profile-bf16 80 --precision bf16
left=$(( 390 - $(date +%s) + T0 ))
if (( left > 170 )); then
  MODES=bf16-compile,fp8-delayed-compile
  echo "python3 optimize_performance.py --preset 1b --steps 20 --timeout 100 --no_layers --compare-reference --modes $MODES --out \$OUT/bench-1b" > $R/bench-1b.command
  timeout $left python3 optimize_performance.py --preset 1b --steps 20 --timeout 100 --no_layers --compare-reference --modes $MODES --out $R/bench-1b 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-1b.log
  echo "bench-1b at $(( $(date +%s) - T0 )) s:"; grep -A4 "^| configuration" $R/bench-1b.log | tail -3 | cut -d'|' -f2-5,9,10,11,13
else echo "bench-1b SKIPPED ($left s left)"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
