#!/usr/bin/env bash
# PREPARED IN THE TENTH SESSION ON BRANCH fp8-cast-kernel, NOT YET RUN (kind nvidia-h200, one GPU alone). NOTES 42.
# Calls 36-42: with float32 inputs (RMSNorm's output of the float32 residual stream) our cast kernel's transposed
# copy was wrong however the tile was transposed in registers (likely triton-lang/triton#11111, the ptxas Triton
# bundles for Hopper); a second load of the tile in transposed order was right (call 42). The kernel now does that
# for float32 inputs, and under autocast the layers hand it bf16 (RMSNorm's output rounded first, as TorchAO
# does), the dtype whose one-load path passed every check. One call:
#  1. the variants of call 42 again, with Triton's ptxas and, if the machine has a newer one, with that
#     (TRITON_PTXAS_PATH): does the ptxas explain it?
#  2. every kernel checked (float32 inputs of the cast too) and timed, at the seed shape and at the 1B shape
#     (the SwiGLU kernels, the default on main, were checked at the seed shape only);
#  3. the seed model's first step with every cast through the kernel, each cast's two layouts compared;
#  4. seed and 1B bench rows: bf16, fp8 default, -castinputs (the inputs' casts only: call 36's -castgrads lost
#     2.5 ms, so the forward's casts may gain more alone), -castall (a row whose loss is not finite now fails).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_castfix; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cast_kernel_fixed.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
rows() {
  grep -A7 "^| configuration" $R/$1.log | tail -6 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name', r.get('mode')), r.get('loss'), r.get('error', ''), *(r.get('stderr_tail') or [])[-25:], sep='\n  ') for r in json.load(open('$R/$1/matrix.json'))['rows']]"
}
# every ptxas on the machine with its version, newest last ("13.0 /path/ptxas")
timeout 30 find / -xdev -name ptxas -type f 2>/dev/null | while read p; do
  echo "$($p --version | grep -o 'release [0-9.]*' | cut -d' ' -f2) $p"; done | sort -V > $R/ptxas.txt
cat $R/ptxas.txt
timeout 60 python3 benchmarks/debug_cast_variants.py > $R/variants.log 2>&1
echo "variants rc=$? (bundled ptxas), float32 wrong: $(grep -c 'float32.*transposed 0\.[0-9]*[1-9]' $R/variants.log) of 24"
NEWER=$(grep "^13" $R/ptxas.txt | tail -1 | cut -d' ' -f2)  # Triton's own for Hopper is 12.x (#11111)
if [ -n "$NEWER" ]; then
  TRITON_PTXAS_PATH=$NEWER timeout 60 python3 benchmarks/debug_cast_variants.py > $R/variants-newer-ptxas.log 2>&1
  echo "variants with $NEWER rc=$?, float32 wrong: $(grep -c 'float32.*transposed 0\.[0-9]*[1-9]' $R/variants-newer-ptxas.log) of 24"
fi
pack
for shape in "seed:16384:3584:896" "1b:16384:5632:2048"; do
  IFS=: read name M N D <<< "$shape"
  echo "python3 benchmarks/kernel_swiglu_fp8.py --M $M --N $N --D $D --out \$OUT/kernels-$name.json" > $R/kernels-$name.command
  timeout 120 python3 benchmarks/kernel_swiglu_fp8.py --M $M --N $N --D $D --out $R/kernels-$name.json > $R/kernels-$name.log 2>&1
  echo "kernels $name rc=$? at $(( $(date +%s) - T0 )) s: $(grep -ac PASS $R/kernels-$name.log) PASS"
  grep -a "FAIL\|Error" $R/kernels-$name.log | head; grep -a "cast .* us \|autotuner chose" $R/kernels-$name.log; pack
done
echo "FIRST_GRADS=seed:eager:all:fused:check python3 benchmarks/debug_kernel_casts.py" > $R/first_grads.command
FIRST_GRADS=seed:eager:all:fused:check timeout 90 python3 benchmarks/debug_kernel_casts.py > $R/first_grads.log 2>&1
echo "first grads at $(( $(date +%s) - T0 )) s:"; grep -a "^first grads\|^patch" $R/first_grads.log; pack
MODES=bf16-compile,fp8-delayed-compile,fp8-delayed-compile-castinputs,fp8-delayed-compile-castall
for preset in seed 1b; do
  left=$(( 570 - $(date +%s) + T0 )); steps=$([ $preset = seed ] && echo 30 || echo 15)
  (( left < 120 )) && { echo "bench-$preset SKIPPED ($left s left)"; continue; }
  echo "python3 optimize_performance.py --preset $preset --steps $steps --timeout 150 --no_layers --modes $MODES --out \$OUT/bench-$preset" > $R/bench-$preset.command
  timeout $left python3 optimize_performance.py --preset $preset --steps $steps --timeout 150 --no_layers --modes $MODES --out $R/bench-$preset 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-$preset.log
  echo "bench-$preset at $(( $(date +%s) - T0 )) s:"; rows bench-$preset; pack
done
echo "total $(( $(date +%s) - T0 )) s"
