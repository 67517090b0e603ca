#!/usr/bin/env bash
# Device call for issues 3 and 4 (kind nvidia-h200-x2): the 1B preset's default matrix, split over the two
# GPUs of one host, each half a single-GPU job with its own bf16-compile baseline (compare ratios only within
# a half). GPU 0: the modes the yardstick also has, with the yardstick (the issue-3 bar at 1B). GPU 1: the
# full verify_fp8_compilation.py, then the rest of the default modes and the per-layer table.
# (Half a ran once in call 5 with FlashAttention requested first: benchmarks/results/1b_matrix_default_a/.)
# Results tarred into $OUT/matrix_1b.tar.gz; matrix.json is written after every row, so a cut keeps rows.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1b; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
run_half() {  # name, modes, extra flags
  python3 optimize_performance.py --preset 1b --steps 8 --timeout 150 --modes "$2" $3 --out $R/$1 2>&1 \
    | tr '\r' '\n' | grep -v "^configurations:" > $R/$1.log
  echo "$1 rc=${PIPESTATUS[0]}"
}
( export CUDA_VISIBLE_DEVICES=0
  run_half a bf16-compile,fp8-tensorwise-compile,bf16-eager,fp8-rowwise-compile,fp8-tensorwise-eager \
    "--compare-reference --no_layers" ) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  timeout 200 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1; echo "verify rc=$?"
  run_half b bf16-compile,bf16-compile-flash,fp8-rowwise_with_gw_hp-compile,bf16-compile-ac,fp8-tensorwise-compile-ac,bf16-compile-math "" ) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu0.log $R/gpu1.log; tail -12 $R/a.log; tail -20 $R/b.log; tail -3 $R/verify_fp8_compilation.txt
tar czf $OUT/matrix_1b.tar.gz -C $R .
