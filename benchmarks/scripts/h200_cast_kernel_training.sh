#!/usr/bin/env bash
# PREPARED IN THE TENTH SESSION ON BRANCHES fp8-cast-kernel / fp8-head-kernel, NOT YET RUN (kind nvidia-h200, one
# GPU alone). NOTES 43, 46. For after the bench (h200_kernels_next.sh), if a kernel choice was right and faster:
# the same in training, where quality is judged. The seed guide's command (8 micro-batches), 60 steps on
# gutenberg: fp8 with the flags in NEW (default "--fp8_kernel_casts inputs"), fp8 default, bf16 (tokens/s,
# validation losses: fp8 within 1% of bf16); then the small configuration, bf16 and fp8 with NEW, 200 steps.
# Usage: NEW="--fp8_kernel_casts inputs --fp8_head_kernel" bash benchmarks/scripts/h200_cast_kernel_training.sh
set -u
NEW=${NEW:---fp8_kernel_casts inputs}
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_castt; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/; echo "NEW=$NEW" > $R/new_flags.txt
T0=$(date +%s); PACK=cast_kernel_training.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
gpu_log_start
G="$GUIDE --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 5"
run guide-fp8-new 140 $G --use_fp8 $NEW
run guide-fp8 130 $G --use_fp8
run guide-bf16 120 $G
SMALL="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200 --warmup_steps 20 --eval_interval 100 --eval_steps 10 --log_interval 10 --compile_model --use_flash_attn --no_gradient_checkpointing"
left=$(( 560 - $(date +%s) + T0 ))
if (( left > 150 )); then
  run small-bf16 $(( left / 2 )) $SMALL
  run small-fp8-new $(( 560 - $(date +%s) + T0 )) $SMALL --use_fp8 $NEW
else echo "small SKIPPED ($left s left)"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
