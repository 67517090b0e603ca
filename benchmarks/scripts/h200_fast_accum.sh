#!/usr/bin/env bash
# Prepared in the thirteenth session; run as call 57 (fourteenth session, ~6.5 min). NOTES 67, 68.
# --fp8_fast_accum: the delayed layers' and the fused SwiGLU's forward products with cuBLAS's fast accumulation,
# as TorchAO's Float8Linear does by default (our recipe never asked for it).
#  1. the blocks' forward products alone at the seed and 1B shapes: bf16, fp8, fp8 fast; their errors;
#  2. seed bench, 30 steps: bf16, fp8 default, fp8 -fastacc;
#  3. 1B bench, 15 steps: the same;
#  4. quality: the small configuration, 200 steps on gutenberg, fp8 default and fp8 --fp8_fast_accum (calls 46,
#     51: fp8 5.7474, bf16 5.7294; the same-call pair is what counts).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_fast_accum; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=fast_accum.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh  # pack, run
echo "python3 benchmarks/gemm_fast_accum.py --out \$OUT/gemm.json" > $R/gemm.command
timeout 90 python3 benchmarks/gemm_fast_accum.py --out $R/gemm.json > $R/gemm.log 2>&1
echo "gemm rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "seed\|1b" $R/gemm.log; pack
bench() {  # preset, steps, modes
  left=$(( 560 - $(date +%s) + T0 ))
  (( left < 120 )) && { echo "bench-$1 SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out \$OUT/bench-$1" > $R/bench-$1.command
  timeout $left python3 optimize_performance.py --preset $1 --steps $2 --timeout 150 --no_layers --modes $3 --out $R/bench-$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-$1.log
  echo "bench-$1 at $(( $(date +%s) - T0 )) s:"; grep -A5 "^| configuration" $R/bench-$1.log | tail -3 | cut -d'|' -f2-5,9
  python3 -c "import json; [print(r.get('name'), r.get('step_ms_mean'), r.get('loss'), r.get('fp8_fast_accum'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-$1/matrix.json'))['rows']]"
  pack
}
F=fp8-delayed-compile
bench seed 30 bf16-compile,$F,$F-fastacc
bench 1b 15 bf16-compile,$F,$F-fastacc
S="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200 --warmup_steps 20 --eval_interval 100 --eval_steps 10 --log_interval 10 --compile_model --use_flash_attn --no_gradient_checkpointing --use_fp8"
for name in small-fp8-fastacc small-fp8; do
  left=$(( 585 - $(date +%s) + T0 ))
  if (( left > 60 )); then run $name $(( left < 90 ? left : 90 )) $S $([ $name = small-fp8-fastacc ] && echo --fp8_fast_accum)
  else echo "$name SKIPPED ($left s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
