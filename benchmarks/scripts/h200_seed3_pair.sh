#!/usr/bin/env bash
# Call 90 (twenty-first session; kind nvidia-h200, one GPU alone). NOTES 115.
# The seed guide's command at seed 3 with a 30-step warm-up, bf16 then fp8, with the GPU's clocks and power logged
# every 100 ms: a sixth same-call training pair for the 1.30x target and a fourth seed for the 1% quality bar.
# Calls 88-89 found the seed bench at 1.228-1.239x on a machine whose GPU held its 700 W cap at ~1,770 MHz.
# A part starts only if its whole limit is left (NOTES 94).
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_seed3; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=seed3.tar.gz
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 3"
source benchmarks/scripts/lib_single.sh  # run, left, gpu_log_start
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
G="$GUIDE --max_steps 120 --warmup_steps 30 --eval_interval 60 --eval_steps 10 --log_interval 10"
gpu_log_start
for part in "warm30-bf16:140:$G" "warm30-fp8:165:$G --use_fp8"; do
  IFS=: read -r name secs flags <<< "$part"
  if (( $(left) >= secs )); then run $name $secs $flags
  else echo "$name SKIPPED ($(left) s left)"; fi
done
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
