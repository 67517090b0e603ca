#!/usr/bin/env bash
# PREPARED IN THE FOURTEENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone; ~8.5 min). NOTES 71.
# The quality criterion (fp8's final validation loss within 1% of bf16's) with more than one pair: calls 58-59's
# seed-0 pairs were +1.09% and -0.38% apart, while the command's bf16 runs alone span 1.5%. The seed guide's
# command at 120 steps on gutenberg with seeds 1 and 2 (other data order and initial weights), bf16 and fp8 (the
# defaults) each; with calls 58-59 that makes four pairs of the current defaults' settings.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_quality_seeds; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=quality_seeds.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0"
source benchmarks/scripts/lib_single.sh
G="$GUIDE --max_steps 120 --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10"
for seed in 1 2; do
  for precision in bf16 fp8; do
    left=$(( 585 - $(date +%s) + T0 ))
    if (( left > 110 )); then run guide-$precision-seed$seed $(( left < 140 ? left : 140 )) $G --seed $seed $([ $precision = fp8 ] && echo --use_fp8)
    else echo "guide-$precision-seed$seed SKIPPED ($left s left)"; fi
  done
done
echo "total $(( $(date +%s) - T0 )) s"
