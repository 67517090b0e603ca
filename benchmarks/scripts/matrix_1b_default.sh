#!/usr/bin/env bash
# Device calls for issue 4 (kind nvidia-h200): the default matrix for the 1B preset. It does not fit one
# 10-minute call, so it runs in two, each with its own bf16-compile baseline:
#   bash benchmarks/scripts/matrix_1b_default.sh a   # the modes the yardstick also has, + the yardstick (~8 min)
#   bash benchmarks/scripts/matrix_1b_default.sh b   # the rest of the default modes + per-layer benchmark (~8 min)
# Results into $OUT/1b-a or $OUT/1b-b. Not yet run.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
case "${1:-a}" in
  a) modes=bf16-eager,bf16-compile,fp8-tensorwise-compile,fp8-rowwise-compile,fp8-tensorwise-eager
     extra="--compare-reference --no_layers" ;;
  b) modes=bf16-compile,bf16-compile-cudnn,fp8-tensorwise-compile-cudnn,fp8-rowwise_with_gw_hp-compile,bf16-compile-ac,fp8-tensorwise-compile-ac,bf16-compile-math
     extra="" ;;
esac
python3 optimize_performance.py --preset 1b --modes $modes --steps 8 --timeout 240 $extra --out $OUT/1b-${1:-a} 2>&1 \
  | grep -v "config/s\]" | tail -40
