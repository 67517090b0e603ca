#!/usr/bin/env bash
# Fourteenth session, call 60 (kind nvidia-h200, one GPU alone; ~5 min, what the device budget had left). NOTES 68.
# The 1B configuration through the trainer with the new defaults (weights cast once per optimizer step, fast
# accumulation), 4 micro-batches of 8 x 2048 a step, 15 steps on gutenberg: fp8 then bf16.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_1b_training; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=1b_training.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
L="--preset 1b --batch_size 8 --gradient_accumulation_steps 4 --max_steps 15 --warmup_steps 3 --eval_interval 15 --eval_steps 2 --log_interval 5 --compile_model --use_flash_attn --no_gradient_checkpointing"
run 1b-fp8 140 $L --use_fp8
left=$(( 290 - $(date +%s) + T0 ))
if (( left > 60 )); then run 1b-bf16 $left $L; else echo "1b-bf16 SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
