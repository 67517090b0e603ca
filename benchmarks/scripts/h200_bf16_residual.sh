#!/usr/bin/env bash
# PREPARED IN THE TENTH SESSION ON BRANCH bf16-residual, NOT YET RUN (kind nvidia-h200, one GPU alone). NOTES 45.
# --residual_dtype bf16 keeps the residual stream (the embedding's output, every block's sum, their gradients)
# in bf16 instead of float32: RMSNorm (forward, and backward with the residual add and, in fp8, the casts), and
# the adds move half the bytes. Both precisions gain; fp8 more in share, its norms carrying the casts. One call:
# seed bench bf16 / fp8 with and without -bf16res (30 steps), then the same at 1B (15 steps) while time allows.
# The quality check (training on gutenberg, bf16 residual against float32) is a second call, if the speed pays.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_bf16res; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=bf16_residual.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
MODES=bf16-compile,bf16-compile-bf16res,fp8-delayed-compile,fp8-delayed-compile-bf16res
for preset in seed 1b; do
  left=$(( 570 - $(date +%s) + T0 )); steps=$([ $preset = seed ] && echo 30 || echo 15)
  (( left < 150 )) && { echo "bench-$preset SKIPPED ($left s left)"; continue; }
  echo "python3 optimize_performance.py --preset $preset --steps $steps --timeout 150 --no_layers --modes $MODES --out \$OUT/bench-$preset" > $R/bench-$preset.command
  timeout $left python3 optimize_performance.py --preset $preset --steps $steps --timeout 150 --no_layers --modes $MODES --out $R/bench-$preset 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-$preset.log
  echo "bench-$preset at $(( $(date +%s) - T0 )) s:"; grep -A7 "^| configuration" $R/bench-$preset.log | tail -6 | cut -d'|' -f2-5,9,13
  python3 -c "import json; [print(r.get('name'), r.get('loss'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-$preset/matrix.json'))['rows']]"
  pack
done
echo "total $(( $(date +%s) - T0 )) s"
