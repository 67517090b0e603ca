#!/usr/bin/env bash
# PREPARED IN THE NINTH SESSION ON BRANCH fp8-cast-kernel, NOT YET RUN (kind nvidia-h200, one GPU alone). NOTES 41.
# Call 35's profile: the fp8 seed step's RMSNorm kernels, into which inductor fuses the casts, transposed copies
# and amaxes of what they feed, take ~10.7 ms against bf16's ~4.9 ms of norms. This branch can cast a delayed
# layer's input and output gradient with our own kernel instead (fp8_cast.py: one pass in 2-D tiles, both
# layouts, atomic amax), behind the bench suffixes -castgrads (the output gradients' casts, in the backward,
# where inductor's fused kernels are slowest) and -castall (every cast of a delayed layer):
#  1. every kernel of ours against its reference (fresh random inputs, in range and saturating, every tile and
#     the autotuner's choice), then timed from CUDA graph replays against inductor's code for the same work;
#  2. seed bench, 30 timed steps: bf16, fp8 delayed (default: CUDA graphs, fused SwiGLU), the same with
#     -castgrads and with -castall; losses must agree; then a profile of the -castall step (breakdown.json: the
#     time of each of our cast kernels and of what inductor's norms became);
#  3. the same bench rows at 1B if the call's time allows.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_cast; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cast_kernel.tar.gz
source benchmarks/scripts/lib_single.sh  # pack, profile
rows() {  # the table's rows, each row's loss, and the end of the traceback of any row that failed
  grep -A6 "^| configuration" $R/$1.log | tail -5 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name', r.get('mode')), r.get('loss'), r.get('error', ''), *(r.get('stderr_tail') or [])[-25:], sep='\n  ') for r in json.load(open('$R/$1/matrix.json'))['rows']]"
}
echo "python3 benchmarks/kernel_swiglu_fp8.py --out \$OUT/kernels.json" > $R/kernels.command
timeout 200 python3 benchmarks/kernel_swiglu_fp8.py --out $R/kernels.json > $R/kernels.log 2>&1
echo "kernels rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "FAIL\|Error" $R/kernels.log | head; grep -a " us \|autotuner chose" $R/kernels.log; pack
MODES=bf16-compile,fp8-delayed-compile,fp8-delayed-compile-castgrads,fp8-delayed-compile-castall
echo "python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --modes $MODES --out \$OUT/bench" > $R/bench.command
timeout 300 python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --modes $MODES --out $R/bench 2>&1 \
  | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench.log
echo "bench at $(( $(date +%s) - T0 )) s:"; rows bench; pack
profile profile-castall 100 --precision fp8-delayed --kernel_casts all
left=$(( 580 - $(date +%s) + T0 ))
if (( left > 150 )); then
  echo "python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out \$OUT/bench-1b" > $R/bench-1b.command
  timeout $left python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out $R/bench-1b 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-1b.log
  echo "bench-1b at $(( $(date +%s) - T0 )) s:"; rows bench-1b; pack
else echo "bench-1b SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
