#!/usr/bin/env bash
# Call 88 (twenty-first session; kind nvidia-h200, one GPU alone). NOTES 114.
# --tune_kernels (inductor's coordinate-descent tuning and 2-D tiling) was last measured in call 31, when
# inductor still wrote fp8's SwiGLU and casts; the README's and --help's "+2.4-3.8% fp8, +0.5% bf16" date from
# then. Today's defaults, in one call:
#  1. seed bench, 30 steps: bf16-compile and fp8-delayed-compile, untuned;
#  2. the same with --tune_kernels.
# A part starts only if its least time is left (NOTES 94).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_tune_kernels; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=tune_kernels.tar.gz
source benchmarks/scripts/lib_single.sh  # pack, left, bench
MODES="--no_layers --modes bf16-compile,fp8-delayed-compile"
bench bench-seed 120 200 --preset seed --steps 30 --timeout 150 $MODES
bench bench-seed-tuned 200 360 --preset seed --steps 30 --timeout 240 --tune_kernels $MODES
for b in bench-seed bench-seed-tuned; do grep -a -A3 "^| configuration" $R/$b.log | cut -d'|' -f2-4,9-11; done
echo "total $(( $(date +%s) - T0 )) s"
