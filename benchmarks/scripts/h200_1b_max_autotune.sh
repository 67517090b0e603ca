#!/usr/bin/env bash
# Call 69 (sixteenth session; kind nvidia-h200, one GPU alone; ~9 min, run with a 330 s limit: gemm_products.py and
# the 1B bench ran, the max-autotune bench did not). NOTES 76-77, 79, 85 (the result).
# Call 63's 1B profile: the fp8 products run at 69% of the fp8 peak (66.2 ms of a 132 ms step) and the fp8-only
# work is ~9.2 ms, so 1.50x needs faster fp8 products, not only leaner casts. `--compile_mode max-autotune` lets
# inductor time its Triton scaled_mm templates against cuBLAS for every product shape (never tried here: NOTES
# 37(b) prepared it before the delayed recipe's kernels existed). First benchmarks/gemm_products.py (~1 min): every
# product of a block alone, fp8 and bf16, seed and 1B, and w1 | w3 as one product (NOTES 79); then the 1B bench,
# 15 steps: bf16 and fp8 (today's defaults), then fp8 with max-autotune (CUDA graphs as well, as auto gives fp8).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1b_max_autotune; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=1b_max_autotune.tar.gz
source benchmarks/scripts/lib_single.sh  # pack
bench() {  # name, seconds, optimize_performance flags...
  local name=$1 secs=$2; shift 2
  local left=$(( 585 - $(date +%s) + T0 ))
  (( left < 90 )) && { echo "$name SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out \$OUT/$name $*" > $R/$name.command
  timeout $(( left < secs ? left : secs )) python3 optimize_performance.py --preset 1b --steps 15 --no_layers --out $R/$name "$@" 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$name at $(( $(date +%s) - T0 )) s:"
  python3 -c "import json; [print(' ', r.get('name'), r.get('compile_mode'), r.get('step_ms_mean'), r.get('tokens_per_second'), r.get('warmup_seconds'), r.get('error', ''), sep='  ') for r in json.load(open('$R/$name/matrix.json'))['rows']]"
  pack
}
echo "python3 benchmarks/gemm_products.py --out \$OUT/gemm_products.json" > $R/gemm_products.command
timeout 120 python3 benchmarks/gemm_products.py --out $R/gemm_products.json > $R/gemm_products.log 2>&1
echo "gemm_products rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "as one\|a micro-batch" $R/gemm_products.log; pack
bench bench-1b 260 --timeout 150 --modes bf16-compile,fp8-delayed-compile
bench bench-1b-max-autotune 320 --timeout 300 --compile_mode max-autotune --modes fp8-delayed-compile
echo "total $(( $(date +%s) - T0 )) s"
