#!/usr/bin/env bash
# Call 85 (twentieth session; kind nvidia-h200, one GPU alone; 303 s). NOTES 108.
# Today's code beside stock TorchAO (../shared/reference/anchor_bench.py) in one call, at both of the issue's
# configurations. The last same-call comparison is call 77's seed bench, before the cast_buffers refactor; at 1B
# the last one with the reference predates the weight cache, fast accumulation and w1 | w3 as one product.
#  1. seed bench, 30 steps: bf16-compile and fp8-delayed-compile (the default), with the reference's rows;
#  2. 1B bench, 12 steps: the same two, with the reference's rows.
# A part starts only if its least time is left (NOTES 94).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_final_reference; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=final_reference.tar.gz
source benchmarks/scripts/lib_single.sh  # pack, left, bench
MODES="--no_layers --modes bf16-compile,fp8-delayed-compile --compare-reference"
bench bench-seed 200 240 --preset seed --steps 30 --timeout 150 $MODES
bench bench-1b 240 585 --preset 1b --steps 12 --timeout 120 $MODES
for b in bench-seed bench-1b; do grep -a -A3 "^| configuration" $R/$b.log | cut -d'|' -f2-4,9-11; done
echo "total $(( $(date +%s) - T0 )) s"
