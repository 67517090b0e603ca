#!/usr/bin/env bash
# PREPARED IN THE EIGHTH SESSION ON BRANCH fp8-swiglu-kernel, NOT YET RUN (kind nvidia-h200, one GPU alone). NOTES 38.
#  1. our Triton kernel for SwiGLU's fp8 backward against the PyTorch reference (fresh random inputs, in range and
#     saturating, every tile shape), then microseconds per call against inductor's code for the same computation
#     and against bf16's SwiGLU backward alone, at the seed shape (16 x 1024 tokens, 3584 wide);
#  2. verify_fp8_compilation.py's check of the fused module through the kernels against the three layers;
#     the seed bench, 30 timed steps: bf16, fp8 delayed (default: CUDA graphs), fp8 delayed with each SwiGLU as one
#     function calling the kernel (-swiglu); the rows' losses must agree (same seed, same batches);
#  3. the same rows at 1B if the call's time allows.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_swiglu; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=swiglu_kernel.tar.gz
pack() { tar czf $OUT/$PACK -C $R .; }
echo "python3 benchmarks/kernel_swiglu_fp8.py --out \$OUT/swiglu_fp8.json" > $R/swiglu_fp8.command
timeout 150 python3 benchmarks/kernel_swiglu_fp8.py --out $R/swiglu_fp8.json > $R/swiglu_fp8.log 2>&1
echo "swiglu_fp8 rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "check\| us " $R/swiglu_fp8.log | head -60; pack
# the fused module through the kernels against the three float8 layers it replaces (verify_fp8_compilation.py's check)
CHECK="import torch; from cs336_basics.precision.verify import check_swiglu_kernels as c; print(c(torch.device('cuda')).line())"
echo "python3 -c \"$CHECK\"" > $R/verify_swiglu.command
timeout 60 python3 -c "$CHECK" > $R/verify_swiglu.log 2>&1; tail -1 $R/verify_swiglu.log
MODES=bf16-compile,fp8-delayed-compile,fp8-delayed-compile-swiglu
echo "python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --modes $MODES --out \$OUT/bench" > $R/bench.command
timeout 300 python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --modes $MODES --out $R/bench 2>&1 \
  | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench.log
echo "bench at $(( $(date +%s) - T0 )) s:"; grep -A4 "^| configuration" $R/bench.log | tail -3 | cut -d'|' -f2-5,9,13
python3 -c "import json; [print(r['name'], r.get('loss'), r.get('error', '')) for r in json.load(open('$R/bench/matrix.json'))['rows']]"
pack
# 3. the same three rows at 1B (micro-batch 8 x 2048), 20 timed steps, if the time is left
left=$(( 580 - $(date +%s) + T0 ))
if (( left > 150 )); then
  echo "python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out \$OUT/bench-1b" > $R/bench-1b.command
  timeout $left python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out $R/bench-1b 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-1b.log
  echo "bench-1b at $(( $(date +%s) - T0 )) s:"; grep -A4 "^| configuration" $R/bench-1b.log | tail -3 | cut -d'|' -f2-5,9,13
  pack
else echo "bench-1b SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
