#!/usr/bin/env bash
# Call 79 (eighteenth session; kind nvidia-h200, one GPU alone; 468 s: the max-autotune part timed out). NOTES 85, 95, 100.
# The last part of call 69's script, which its time limit cut: the 1B fp8 products run at ~69% of the fp8 peak
# (call 63), and 1.50x at 1B needs faster products. `--compile_mode max-autotune` lets inductor time its Triton
# scaled_mm templates against cuBLAS for each product shape (and keeps CUDA graphs, as auto gives fp8).
#  1. the 1B bench, 15 steps: bf16 and fp8 (today's defaults; call 72: ~150 s for two modes);
#  2. fp8 with max-autotune (its autotuning may take minutes: 330 s, whatever is left).
# Budget (NOTES 94): counted from before the set-up; a part starts only if its time is left.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1b_max_autotune_only; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=1b_max_autotune_only.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
left() { echo $(( 585 - $(date +%s) + T0 )); }
bench() {  # name, seconds it needs at least, seconds it may take at most, optimize_performance flags...
  local name=$1 least=$2 most=$3; shift 3
  (( $(left) < least )) && { echo "$name SKIPPED ($(left) s left)"; return; }
  echo "python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out \$OUT/$name $*" > $R/$name.command
  timeout $(( $(left) < most ? $(left) : most )) python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out $R/$name "$@" 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name at $(( $(date +%s) - T0 )) s:"
  python3 -c "import json; [print(' ', r.get('name'), r.get('compile_mode'), r.get('step_ms_mean'), r.get('tokens_per_second'), r.get('warmup_seconds'), r.get('error', ''), sep='  ') for r in json.load(open('$R/$name/matrix.json'))['rows']]"
  pack
}
bench bench-1b 200 220 --timeout 150 --modes bf16-compile,fp8-delayed-compile
bench bench-1b-max-autotune 240 600 --timeout 330 --compile_mode max-autotune --modes fp8-delayed-compile
echo "total $(( $(date +%s) - T0 )) s"
