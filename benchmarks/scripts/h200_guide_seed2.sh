#!/usr/bin/env bash
# Call 80 of the eighteenth session (kind nvidia-h200, one GPU alone; 260 s, the session's last device time). NOTES 101.
# The seed guide's command, 120 steps on gutenberg, seed 2: bf16, then fp8 with today's defaults (w1 | w3 as one
# product): a second same-call pair beside call 77's seed 0 (1.297x; val +0.70%).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_guide_seed2; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=guide_seed2.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 2"
source benchmarks/scripts/lib_single.sh
G="$GUIDE --max_steps 120 --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10"
run guide-bf16 140 $G
run guide-fp8 165 $G --use_fp8
echo "total $(( $(date +%s) - T0 )) s"
