#!/usr/bin/env bash
# Device call (one H200): the issue-3 bar for 1B bf16+compile once more, 30 timed steps on both sides (calls 11
# and 14 timed 10-12, where one slow step moves a mean by ~1.5%); ours / stock is mean over mean since 8464e32.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
timeout 170 python3 optimize_performance.py --preset 1b --modes bf16-compile --steps 30 --timeout 80 --no_layers \
  --compare-reference --out $OUT/1b_bf16_bar 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $OUT/1b_bf16_bar.log
grep -A3 "^| configuration" $OUT/1b_bf16_bar.log; rm -f $OUT/1b_bf16_bar/*.png
