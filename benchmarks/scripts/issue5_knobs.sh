#!/usr/bin/env bash
# Device call for issue 5 (kind nvidia-h200-x2): cheap levers on the seed model, each a two-row matrix
# (bf16+compile, fp8 tensorwise+compile) so every ratio has its own bf16 baseline from the same GPU.
#  GPU 0: stock settings with the yardstick; then TorchInductor coordinate-descent tuning of its kernels.
#  GPU 1: CUDA graphs (--compile_mode reduce-overhead); then N-d tiling for the transposed fp8 casts.
# Not yet run. Results tarred into $OUT/issue5_knobs.tar.gz (matrix.json is written after every row).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_knobs; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
M="--preset seed --steps 12 --timeout 200 --no_layers --modes bf16-compile,fp8-tensorwise-compile"
knob() {  # name, flags...
  local name=$1; shift
  timeout 280 python3 optimize_performance.py $M "$@" --out $R/$name 2>&1 | tr '\r' '\n' | grep -v "^configurations:" > $R/$name.log
  echo "$name rc=${PIPESTATUS[0]}"; grep -A4 "^| configuration" $R/$name.log
}
( export CUDA_VISIBLE_DEVICES=0
  knob stock --compare-reference
  knob coordinate_descent --inductor coordinate_descent_tuning=True ) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  knob cuda_graphs --compile_mode reduce-overhead
  knob nd_tiling --inductor triton.prefer_nd_tiling=True,triton.tile_reductions=True ) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu0.log $R/gpu1.log
tar czf $OUT/issue5_knobs.tar.gz -C $R .
