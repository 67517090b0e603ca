#!/usr/bin/env bash
# PREPARED IN THE EIGHTEENTH SESSION; RUN AS CALL 81 (kind nvidia-h200, one GPU alone; 437 s). NOTES 101, 103, 104.
# Call 80's seed-2 pair missed the quality bar (+1.90%) with the guide's 10-step warm-up, as seed 1's did (+3.27%,
# call 62); for seed 1 a 30-step warm-up (-0.44%, -1.17%) and --fp8_start_step 10 (-0.25%) were the remedies
# (calls 67, 71). The same two at seed 2, with a same-call bf16 run for the warm-up-30 pair (the start-step run
# pairs with call 80's bf16, whose schedule it shares: 5.8092). 120 steps each, gutenberg.
# Budget (NOTES 94): counted from before the set-up; a part starts only if its whole limit is left.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_seed2_remedies; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=seed2_remedies.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 2"
source benchmarks/scripts/lib_single.sh  # run, left
G="$GUIDE --max_steps 120 --eval_interval 60 --eval_steps 10 --log_interval 10"
for part in "warm30-bf16:140:--warmup_steps 30" "warm30-fp8:165:--warmup_steps 30 --use_fp8" \
            "start10-fp8:175:--warmup_steps 10 --use_fp8 --fp8_start_step 10"; do
  IFS=: read -r name secs extra <<< "$part"
  if (( $(left) >= secs )); then run $name $secs $G $extra
  else echo "$name SKIPPED ($(left) s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
