#!/usr/bin/env bash
# PREPARED IN THE NINTH SESSION ON BRANCH fp8-swiglu-kernel (kind nvidia-h200, one GPU alone). NOTES 39.
# Call 33: the fused SwiGLU (swiglu_fp8.py) took the seed bench from 1.137x to 1.215x and 1B from 1.282x to
# 1.332x. It is now the delayed recipe's default (--no-fp8_fused_swiglu: the three layers). In training:
#  1. the seed guide's own command (8 micro-batches), 60 steps on gutenberg: fp8 fused (the default), fp8 with
#     --no-fp8_fused_swiglu, bf16: tokens/s, and the validation losses (fp8 within 1% of bf16);
#  2. the small configuration (dim 384, 6 layers), 200 steps: bf16 and fp8 (fused): validation loss within 1%.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_swt; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=swiglu_training.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
gpu_log_start
G="$GUIDE --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 5"
run guide-fp8 140 $G --use_fp8
run guide-fp8-unfused 130 $G --use_fp8 --no-fp8_fused_swiglu
run guide-bf16 120 $G
SMALL="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200 --warmup_steps 20 --eval_interval 100 --eval_steps 10 --log_interval 10 --compile_model --use_flash_attn --no_gradient_checkpointing"
left=$(( 560 - $(date +%s) + T0 ))
if (( left > 150 )); then
  run small-bf16 $(( left / 2 )) $SMALL
  run small-fp8 $(( 560 - $(date +%s) + T0 )) $SMALL --use_fp8
else echo "small SKIPPED ($left s left)"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
