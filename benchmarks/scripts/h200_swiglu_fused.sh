#!/usr/bin/env bash
# PREPARED IN THE NINTH SESSION ON BRANCH fp8-swiglu-kernel (kind nvidia-h200, one GPU alone). NOTES 38-39.
# Call 32 checked the kernels and timed them; the fused module failed (scales not 16-byte aligned). Now:
#  1. the kernels again, every tile and both ways of storing the transposed copy, and the autotuner's choice
#     (what the model now runs): checks against the references, then timings against inductor's code;
#  2. verify_fp8_compilation.py's check of the fused module through the kernels against the three layers;
#  3. the seed bench, 30 timed steps: bf16, fp8 delayed (CUDA graphs), fp8 delayed with the fused SwiGLU
#     (-swiglu), and stock TorchAO's bf16 and fp8 (anchor_bench.py) in the same call; losses must agree;
#  4. the same three rows of ours at 1B if the call's time allows.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_swiglu; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=swiglu_fused.tar.gz
pack() { tar czf $OUT/$PACK -C $R .; }
rows() {  # the table's rows, each row's loss, and the end of the traceback of any row that failed
  grep -A5 "^| configuration" $R/$1.log | tail -4 | cut -d'|' -f2-5,9,11,13
  python3 -c "import json; [print(r.get('name', r.get('mode')), r.get('loss'), r.get('error', ''), *(r.get('stderr_tail') or [])[-25:], sep='\n  ') for r in json.load(open('$R/$1/matrix.json'))['rows']]"
}
echo "python3 benchmarks/kernel_swiglu_fp8.py --out \$OUT/swiglu_fp8.json" > $R/swiglu_fp8.command
timeout 200 python3 benchmarks/kernel_swiglu_fp8.py --out $R/swiglu_fp8.json > $R/swiglu_fp8.log 2>&1
echo "swiglu_fp8 rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "FAIL\|Error" $R/swiglu_fp8.log | head; grep -a " us " $R/swiglu_fp8.log; pack
CHECK="import torch; from cs336_basics.precision.verify import check_swiglu_kernels as c; print(c(torch.device('cuda')).line())"
echo "python3 -c \"$CHECK\"" > $R/verify_swiglu.command
timeout 90 python3 -c "$CHECK" > $R/verify_swiglu.log 2>&1; tail -3 $R/verify_swiglu.log
MODES=bf16-compile,fp8-delayed-compile,fp8-delayed-compile-swiglu
echo "python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --compare-reference --modes $MODES --out \$OUT/bench" > $R/bench.command
timeout 330 python3 optimize_performance.py --preset seed --steps 30 --timeout 150 --no_layers --compare-reference --modes $MODES --out $R/bench 2>&1 \
  | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench.log
echo "bench at $(( $(date +%s) - T0 )) s:"; rows bench; pack
left=$(( 580 - $(date +%s) + T0 ))
if (( left > 150 )); then
  echo "python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out \$OUT/bench-1b" > $R/bench-1b.command
  timeout $left python3 optimize_performance.py --preset 1b --steps 20 --timeout 150 --no_layers --modes $MODES --out $R/bench-1b 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-1b.log
  echo "bench-1b at $(( $(date +%s) - T0 )) s:"; rows bench-1b; pack
else echo "bench-1b SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
