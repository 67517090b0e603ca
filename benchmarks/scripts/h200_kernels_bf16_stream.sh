#!/usr/bin/env bash
# PREPARED IN THE TWELFTH SESSION ON BRANCH fp8-head-kernel (merged with main after calls 47-52), NOT YET RUN (kind
# nvidia-h200, one GPU alone; ~8 min). NOTES 48, 57. Call 44 measured our cast kernels with the float32 residual
# stream, when half the casts read float32 (the kernel's slower two-load path); -castall gained 1.5% (seed) and
# 1.0% (1B), within about two call-to-call spreads. With the bf16 stream now the default every cast reads bf16
# (the path every GPU check passed, one load). Same rows again, now on the default stream:
#  1. every kernel checked and timed at the seed shape;
#  2. seed bench, 30 steps: bf16, fp8 default, -castinputs, -castgrads, -castall, -castall-headkernel;
#  3. the 1B bench (bf16, default, -castall, -castall-headkernel) while time allows.
# Keep a variant only if it beats the default by more than the call-to-call spread (~1%) at both sizes.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_bf16stream; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=kernels_bf16_stream.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
kernels() {  # name, M, N, D, V
  echo "python3 benchmarks/kernel_swiglu_fp8.py --M $2 --N $3 --D $4 --V $5 --out \$OUT/kernels-$1.json" > $R/kernels-$1.command
  timeout 150 python3 benchmarks/kernel_swiglu_fp8.py --M $2 --N $3 --D $4 --V $5 --out $R/kernels-$1.json > $R/kernels-$1.log 2>&1
  echo "kernels $1 rc=$? at $(( $(date +%s) - T0 )) s: $(grep -ac PASS $R/kernels-$1.log) PASS, $(grep -ac FAIL $R/kernels-$1.log) FAIL"
  grep -a "FAIL\|Error" $R/kernels-$1.log | head -5; pack
}
bench() {  # preset, steps, modes
  left=$(( 570 - $(date +%s) + T0 ))
  (( left < 150 )) && { echo "bench-$1 SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out \$OUT/bench-$1" > $R/bench-$1.command
  timeout $left python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out $R/bench-$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-$1.log
  echo "bench-$1 at $(( $(date +%s) - T0 )) s:"; grep -A9 "^| configuration" $R/bench-$1.log | tail -8 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name'), r.get('step_ms_mean'), r.get('loss'), r.get('residual_dtype'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-$1/matrix.json'))['rows']]"
  pack
}
F=fp8-delayed-compile
kernels seed 16384 3584 896 50304
bench seed 30 bf16-compile,$F,$F-castinputs,$F-castgrads,$F-castall,$F-castall-headkernel
bench 1b 15 bf16-compile,$F,$F-castall,$F-castall-headkernel
echo "total $(( $(date +%s) - T0 )) s"
