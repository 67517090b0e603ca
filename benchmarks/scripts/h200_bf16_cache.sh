#!/usr/bin/env bash
# PREPARED IN THE FOURTEENTH SESSION, NOT YET RUN (kind nvidia-h200, one GPU alone; ~5.5 min). NOTES 72.
# The like-for-like seed ratio: our fp8 path casts its weights once per optimizer step (the default since call 59),
# our bf16 path casts them under autocast in every micro-batch. --bf16_weight_cache (experimental) gives bf16 the
# same: this call measures what it pays.
#  1. benchmarks/weight_cast_cost.py: the bf16 casts alone per micro-batch, seed and 1B shapes;
#  2. the seed guide's command (8 micro-batches a step), 60 steps on gutenberg: bf16, bf16 --bf16_weight_cache,
#     fp8 (the default), in that order; the ratio against each bf16.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_bf16_cache; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=bf16_cache.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
echo "python3 benchmarks/weight_cast_cost.py --out \$OUT/weight_cast_cost.json" > $R/weight_cast_cost.command
timeout 90 python3 benchmarks/weight_cast_cost.py --out $R/weight_cast_cost.json > $R/weight_cast_cost.log 2>&1
echo "weight_cast_cost rc=$? at $(( $(date +%s) - T0 )) s:"; grep -a "^seed\|^1b" $R/weight_cast_cost.log; pack
G="$GUIDE --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 10"
for name in guide-bf16 guide-bf16-cache guide-fp8; do
  left=$(( 330 - $(date +%s) + T0 ))
  if (( left > 70 )); then
    case $name in guide-bf16) extra="";; guide-bf16-cache) extra="--bf16_weight_cache";; guide-fp8) extra="--use_fp8";; esac
    run $name $(( left < 110 ? left : 110 )) $G $extra
  else echo "$name SKIPPED ($left s left)"; fi
done
grep -a "cast once per optimizer step" $R/guide-bf16-cache.log
echo "total $(( $(date +%s) - T0 )) s"
