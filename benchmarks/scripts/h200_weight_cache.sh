#!/usr/bin/env bash
# PREPARED IN THE TWELFTH SESSION ON BRANCH fp8-weight-cache, NOT YET RUN (kind nvidia-h200, one GPU alone; ~8 min).
# NOTES 58. --fp8_weight_cache casts the delayed recipe's weights once per optimizer step instead of in every
# micro-batch. 1. The seed bench (one micro-batch a step: the same casts, moved; expected neutral): bf16, fp8
# default, fp8 -wcache. 2. The seed guide's command (8 micro-batches a step), 60 steps on gutenberg: fp8 with and
# without the cache (train losses must agree to the run-to-run noise: the numbers are the same), then bf16 for
# the ratio. All with the default (bf16) residual stream. 3. A profile of the seed fp8 step, every kernel listed.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_wcache; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=weight_cache.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
gpu_log_start
B="--preset seed --steps 30 --timeout 200 --no_layers --modes bf16-compile,fp8-delayed-compile,fp8-delayed-compile-wcache"
echo "python3 optimize_performance.py $B --out \$OUT/bench-seed" > $R/bench-seed.command
timeout 200 python3 optimize_performance.py $B --out $R/bench-seed 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-seed.log
echo "bench-seed at $(( $(date +%s) - T0 )) s:"; grep -A4 "^| configuration" $R/bench-seed.log | tail -3 | cut -d'|' -f2-5,9
pack
G="$GUIDE --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 5"
run guide-fp8-wcache 140 $G --use_fp8 --fp8_weight_cache
run guide-fp8 130 $G --use_fp8
left=$(( 570 - $(date +%s) + T0 ))
if (( left > 100 )); then run guide-bf16 $(( left < 130 ? left : 130 )) $G; else echo "guide-bf16 SKIPPED ($left s left)"; fi
kill $SMI; pack
# 3. While time allows: the seed fp8 step profiled (breakdown.json now lists every kernel: the long tail, NOTES 53)
left=$(( 570 - $(date +%s) + T0 ))
if (( left > 60 )); then profile profile-seed-fp8 $left --precision fp8-delayed; else echo "profile SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
