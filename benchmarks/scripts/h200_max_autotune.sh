#!/usr/bin/env bash
# PREPARED IN THE EIGHTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone). NOTES 37: with --compile_mode
# max-autotune inductor times its own Triton templates for aten._scaled_mm against cuBLAS, and (prologue fusion,
# on by default outside fbcode) can fuse the pointwise producers of a template's inputs into it: the fp8 casts and
# transposed copies, ~13 ms of the seed step (call 19), could move into the matmuls' loads. Seed bench, fp8 rows:
#  1. --compile_mode max-autotune (CUDA graphs + GEMM autotuning + coordinate descent), cold cache: steps, loss and
#     the compile time (the price);
#  2. the default (reduce-overhead) bf16 and fp8 rows in the same call, for the ratios.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_mat; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=max_autotune.tar.gz
pack() { tar czf $OUT/$PACK -C $R .; }
matrix() {  # name, seconds, modes, flags...
  local name=$1 secs=$2 modes=$3; shift 3
  local left=$(( 585 - $(date +%s) + T0 )); (( secs < left )) || secs=$left
  (( secs > 90 )) || { echo "$name SKIPPED ($secs s left)"; return; }
  echo "python3 optimize_performance.py --preset seed --steps 30 --timeout $secs --no_layers --modes $modes $* --out \$OUT/$name" > $R/$name.command
  timeout $secs python3 optimize_performance.py --preset seed --steps 30 --timeout $secs --no_layers --modes $modes "$@" \
    --out $R/$name 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name at $(( $(date +%s) - T0 )) s:"; grep -A3 "^| configuration" $R/$name.log | tail -2 | cut -d'|' -f2-5,9,13
  pack
}
matrix max-autotune 450 fp8-delayed-compile --compile_mode max-autotune
matrix default 120 bf16-compile,fp8-delayed-compile
grep -h "loss\|error\|Error" $R/*/matrix.json | head -5
echo "total $(( $(date +%s) - T0 )) s"
