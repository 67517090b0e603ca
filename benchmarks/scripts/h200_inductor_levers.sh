#!/usr/bin/env bash
# PREPARED IN THE SEVENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone). With CUDA graphs the fp8 seed
# step is GPU-bound (NOTES 29); the largest fp8-only cost is inductor's code for the casts: the call-19 profile's
# top Triton kernel, SwiGLU's backward fused with both gradients' amax, e5m2 casts and transposed copies, takes
# 296 us per layer (7.1 ms a step) for ~0.6 GB: ~2 TB/s, where bf16's SwiGLU backward (the same bytes, no amax, no
# transposes) runs at ~4.3 TB/s. A row-reduction kernel (the amax) storing transposed tiles is the suspect.
# Inductor settings that change how such kernels are tiled, each timed on the seed model against no setting, fp8
# rows with the default CUDA graphs, 30 timed steps; bf16 too for coordinate-descent tuning (bf16 MFU target):
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=$OUT; T0=$(date +%s)
matrix() {  # name, modes, inductor settings
  local left=$(( 570 - $(date +%s) + T0 ))
  (( left > 100 )) || { echo "$1 SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes $2 --inductor '$3' --out \$OUT/$1" > $R/$1.command
  timeout $left python3 optimize_performance.py --preset seed --steps 30 --timeout 200 --no_layers --modes $2 \
    ${3:+--inductor "$3"} --out $R/$1 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "$1 at $(( $(date +%s) - T0 )) s:"; grep -A3 "^| configuration" $R/$1.log | tail -2 | cut -d'|' -f2-5,9
}
matrix base bf16-compile,fp8-delayed-compile ""
matrix tile_reductions fp8-delayed-compile "triton.tile_reductions=True"
matrix nd_tiling fp8-delayed-compile "triton.prefer_nd_tiling=True"
matrix coordinate_descent bf16-compile,fp8-delayed-compile "coordinate_descent_tuning=True"
matrix cooperative fp8-delayed-compile "triton.cooperative_reductions=True"
echo "total $(( $(date +%s) - T0 )) s"
