#!/usr/bin/env bash
# Call 71 (seventeenth session; kind nvidia-h200, one GPU alone; 556 s). NOTES 88-89, 91, 93. Since 614ae5d fp8's
# default runs w1 | w3 as one product, so run again its 'fp8' and 'fp8-w13' runs are the same path.
# The seed guide's command, 120 steps on gutenberg, seed 1 with a 30-step warm-up (call 67's pair: bf16 5.6271,
# fp8 5.6022), after this session's changes: bf16 (its weight gradients now in float32 from cuBLAS, NOTES 86),
# fp8 (the default), fp8 --fp8_grad_margin 3 (NOTES 89: fewer clipped gradient casts, predicted neutral or
# better in loss), fp8 --fp8_merge_w13 (NOTES 87: one weight scale for w1 and w3, predicted neutral in loss).
# Each run's log counts its clipped casts; the speed ratios come from the same call.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_quality_next; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=quality_next.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 1 --max_steps 120 --warmup_steps 30 --eval_interval 60 --eval_steps 10 --log_interval 10"
source benchmarks/scripts/lib_single.sh
for v in "bf16:" "fp8:--use_fp8" "fp8-gradmargin3:--use_fp8 --fp8_grad_margin 3" "fp8-w13:--use_fp8 --fp8_merge_w13"; do
  name=seed1-warm30-${v%%:*}; left=$(( 585 - $(date +%s) + T0 ))
  if (( left > 110 )); then run $name $(( left < 140 ? left : 140 )) $GUIDE ${v#*:}; else echo "$name SKIPPED ($left s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
