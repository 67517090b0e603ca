#!/usr/bin/env bash
# PREPARED IN THE TENTH SESSION ON BRANCH fp8-head-kernel (which holds fp8-cast-kernel), NOT YET RUN (kind
# nvidia-h200, one GPU alone). NOTES 42-44, 46. Supersedes h200_cast_kernel_fixed.sh for a session short of time:
#  1. every kernel checked (float32 inputs of the cast too; the head's logit gradient) and timed at the seed shape;
#  2. seed bench, 30 steps: bf16, fp8 default, -castinputs, -headkernel, both, -castall (each fp8 run first checks
#     its kernels at its own shape; a row whose loss is not finite fails);
#  3. the 1B bench (bf16, default, both, -castall) while time allows (each fp8 row checks its kernels at the 1B
#     shapes first, so no separate kernel bench there);
#  4. last, if time is left: call 42's transpose variants with Triton's ptxas and the newest on the machine.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_next; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=kernels_next.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
kernels() {  # name, M, N, D, V
  echo "python3 benchmarks/kernel_swiglu_fp8.py --M $2 --N $3 --D $4 --V $5 --out \$OUT/kernels-$1.json" > $R/kernels-$1.command
  timeout 150 python3 benchmarks/kernel_swiglu_fp8.py --M $2 --N $3 --D $4 --V $5 --out $R/kernels-$1.json > $R/kernels-$1.log 2>&1
  echo "kernels $1 rc=$? at $(( $(date +%s) - T0 )) s: $(grep -ac PASS $R/kernels-$1.log) PASS, $(grep -ac FAIL $R/kernels-$1.log) FAIL"
  grep -a "FAIL\|Error" $R/kernels-$1.log | head -5; grep -a "autotuned .* us\|reference .* us\|autotuner chose" $R/kernels-$1.log; pack
}
bench() {  # preset, steps, modes
  left=$(( 570 - $(date +%s) + T0 ))
  (( left < 150 )) && { echo "bench-$1 SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out \$OUT/bench-$1" > $R/bench-$1.command
  timeout $left python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out $R/bench-$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-$1.log
  echo "bench-$1 at $(( $(date +%s) - T0 )) s:"; grep -A9 "^| configuration" $R/bench-$1.log | tail -8 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name'), r.get('loss'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-$1/matrix.json'))['rows']]"
  pack
}
F=fp8-delayed-compile
kernels seed 16384 3584 896 50304
bench seed 30 bf16-compile,$F,$F-castinputs,$F-headkernel,$F-castinputs-headkernel,$F-castall
bench 1b 15 bf16-compile,$F,$F-castinputs-headkernel,$F-castall
if (( $(date +%s) - T0 < 500 )); then
  timeout 60 python3 benchmarks/debug_cast_variants.py > $R/variants.log 2>&1
  echo "variants rc=$?, float32 wrong: $(grep -c 'float32.*transposed 0\.[0-9]*[1-9]' $R/variants.log) of 24"; pack
fi
echo "total $(( $(date +%s) - T0 )) s"
