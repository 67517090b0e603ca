#!/usr/bin/env bash
# Call 31 (kind nvidia-h200, one GPU alone). --tune_kernels (coordinate-descent tuning + 2-D tiling of inductor's
# Triton kernels, transforms.TUNED_KERNELS) against no tuning in the same call, NOTES 34:
#  1. bench, seed config, bf16 and fp8 rows, 30 timed steps: untuned, then --tune_kernels (cold inductor cache);
#  2. the seed guide's command (8 x 16 x 1024 tokens a step, 60 steps) with --tune_kernels, fp8 then bf16: training
#     tokens/s, and the compilation time with the cache the bench left (the tuned block graphs are the same).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_tuned; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=tune_kernels.tar.gz
source benchmarks/scripts/lib_single.sh
matrix() {  # name, flags...
  local name=$1; shift
  local left=$(( 540 - $(date +%s) + T0 ))
  (( left > 100 )) || { echo "$name SKIPPED ($left s left)"; return; }
  echo "python3 optimize_performance.py --preset seed --steps 30 --timeout 300 --no_layers --modes bf16-compile,fp8-delayed-compile $* --out \$OUT/$name" > $R/$name.command
  echo "$(date -u +%H:%M:%S.%N) start $name" >> $R/phases.txt
  timeout $left python3 optimize_performance.py --preset seed --steps 30 --timeout 300 --no_layers \
    --modes bf16-compile,fp8-delayed-compile "$@" --out $R/$name 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  echo "$(date -u +%H:%M:%S.%N) end $name" >> $R/phases.txt
  echo "$name at $(( $(date +%s) - T0 )) s:"; grep -A3 "^| configuration" $R/$name.log | tail -2 | cut -d'|' -f2-5,9,13
  pack
}
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="$GUIDE --train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 5 --checkpoint_interval 1000 --sample_tokens 0 --seed 0 --tune_kernels"
gpu_log_start
matrix bench-untuned
matrix bench-tuned --tune_kernels
left=$(( 560 - $(date +%s) + T0 )); (( left > 60 )) && run guide-fp8-tuned $(( left < 130 ? left : 130 )) --use_fp8
left=$(( 570 - $(date +%s) + T0 )); (( left > 60 )) && run guide-bf16-tuned $(( left < 130 ? left : 130 ))
grep -a "warm-up and compilation" $R/guide-*.log
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
