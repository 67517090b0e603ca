#!/usr/bin/env bash
# Device call for issue 4 (kind nvidia-h200, ~9 minutes): the default matrix for the 1B preset with the
# per-layer microbenchmark and the stock-TorchAO yardstick, results into $OUT/1b (8 files at most come back).
# Not yet run: this session's device time was spent on the seed matrix and issues 2-3.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
python3 optimize_performance.py --preset 1b --compare-reference --steps 8 --timeout 240 --out $OUT/1b 2>&1 \
  | grep -v "config/s\]" | tail -40
