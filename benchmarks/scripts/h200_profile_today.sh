#!/usr/bin/env bash
# Call 84 (twentieth session; kind nvidia-h200, one GPU alone; 344 s). Prepared in the nineteenth (NOTES 106).
# Today's defaults (the fp8 weight cache, fast accumulation, w1 | w3 as one float8 product; bf16 with its weights
# cast once a step and float32 weight gradients) at 1B through the trainer, then where one step's time goes.
# 1. The 1B configuration trained (micro-batch 8 x 2048, 4 micro-batches a step, 15 steps on gutenberg), bf16 and
#    fp8: the issue's 1B target is our trainer's tokens/s; the last such pair is call 60's (1.422x), before w1 | w3
#    and bf16's float32 weight gradients (call 60 ran both in 174 s).
# 2. benchmarks/profile_step.py, 3 steps of one micro-batch, seed (16 x 1024) and 1B (8 x 2048), fp8 and bf16. The
#    newest profiles are call 54's (seed fp8) and call 49's, before those defaults (call 49 ran four in 158 s).
# A part starts only if its whole limit is left (NOTES 94).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_profile_today; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=profile_today.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh  # run, profile, pack, left
T1B="--preset 1b --batch_size 8 --gradient_accumulation_steps 4 --max_steps 15 --warmup_steps 3 --eval_interval 15 --eval_steps 2 --log_interval 5 --compile_model --use_flash_attn --no_gradient_checkpointing"
for part in "1b-bf16:130:" "1b-fp8:140:--use_fp8"; do
  IFS=: read -r name secs extra <<< "$part"
  if (( $(left) >= secs )); then run $name $secs $T1B $extra
  else echo "$name SKIPPED ($(left) s left)"; fi
done
for spec in "seed-fp8:120:--precision fp8-delayed" "seed-bf16:110:--precision bf16" \
            "1b-fp8:150:--preset 1b --batch_size 8 --precision fp8-delayed" "1b-bf16:140:--preset 1b --batch_size 8 --precision bf16"; do
  IFS=: read -r name secs flags <<< "$spec"
  if (( $(left) >= secs )); then profile profile-$name $secs $flags
  else echo "profile-$name SKIPPED ($(left) s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
