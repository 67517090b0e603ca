#!/usr/bin/env bash
# PREPARED IN THE FIFTEENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone; ~2 min a variant). NOTES 77, 80.
# The quality criterion at seed 1 (call 62: bf16 val 5.8150, fp8 6.0049, +3.27%) for fp8 variants the bisect
# (h200_seed1_bisect.sh) points to: each argument is one variant's extra flags, e.g.
#   bash benchmarks/scripts/h200_seed1_remedies.sh "--fp8_start_step 10" "--no-fp8_head"
# The seed guide's command at seed 1, 120 steps on gutenberg, every 10th step logged; a bf16 run first, so the
# pair is from one call.
set -u
(( $# > 0 )) || { echo "usage: $0 \"FLAGS OF VARIANT 1\" [\"FLAGS OF VARIANT 2\" ...]" >&2; exit 2; }
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_seed1_remedies; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=seed1_remedies.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 1 --max_steps 120 --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10"
source benchmarks/scripts/lib_single.sh
i=0
for variant in "" "$@"; do
  name=$([ -z "$variant" ] && echo seed1-bf16 || echo seed1-fp8-$i); i=$(( i + 1 ))
  left=$(( 585 - $(date +%s) + T0 ))
  if (( left > 110 )); then run $name $(( left < 140 ? left : 140 )) $GUIDE $([ -n "$variant" ] && echo --use_fp8) $variant
  else echo "$name ($variant) SKIPPED ($left s left)"; fi
  [ -n "$variant" ] && echo "  $name: $variant"
done
echo "total $(( $(date +%s) - T0 )) s"
