#!/usr/bin/env bash
# Call 87 (twentieth session; kind nvidia-h200, one GPU alone; 469 s). NOTES 112.
# 1. Call 84's 1B pair again (the same command, seed 0): the second same-code 1B training ratio, for its spread
#    (the only others: call 84's 1.409x, call 60's 1.422x at older defaults).
# 2. The seed guide's command at seed 0 with a 30-step warm-up, bf16 then fp8: the warm-up-30 quality pairs cover
#    seeds 1 and 2 only (calls 67, 71, 81).
# Both also show whether compile_model's filter keeps ATen's rms_norm dtype warning out of the logs.
# A part starts only if its whole limit is left (NOTES 94).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_repeat_seed0; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=repeat_seed0.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh  # run, left
T1B="--preset 1b --batch_size 8 --gradient_accumulation_steps 4 --max_steps 15 --warmup_steps 3 --eval_interval 15 --eval_steps 2 --log_interval 5 --compile_model --use_flash_attn --no_gradient_checkpointing"
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
G="$GUIDE --max_steps 120 --warmup_steps 30 --eval_interval 60 --eval_steps 10 --log_interval 10"
for part in "1b-bf16:110:$T1B" "1b-fp8:130:$T1B --use_fp8" "warm30-bf16:140:$G" "warm30-fp8:165:$G --use_fp8"; do
  IFS=: read -r name secs flags <<< "$part"
  if (( $(left) >= secs )); then run $name $secs $flags
  else echo "$name SKIPPED ($(left) s left)"; fi
done
grep -c "Mismatch dtype" $R/*.log
echo "total $(( $(date +%s) - T0 )) s"
