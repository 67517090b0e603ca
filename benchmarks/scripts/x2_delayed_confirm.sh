#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2) after delayed scaling became the default fp8 recipe on one GPU: its speed
# again with a cheaper scale update, where its step's time goes, and its quality at a second size.
#  GPU 0: the seed matrix (bf16+compile, fp8 delayed, fp8 tensorwise; yardstick bf16 and fp8), then profiles
#         of one seed step, fp8 delayed and fp8 tensorwise.
#  GPU 1: loss parity on gutenberg, 200 steps: small (dim 384, 6 layers) bf16 vs fp8 (delayed), the seed
#         configuration with fp8 tensorwise and fp8 delayed (a second sample beside call 18's).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_confirm; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
( export CUDA_VISIBLE_DEVICES=0
  timeout 250 python3 optimize_performance.py --preset seed --steps 20 --timeout 150 --no_layers --compare-reference \
    --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile --out $R/seed-matrix 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/seed-matrix.log
  echo "seed-matrix rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"
  for p in fp8-delayed fp8-tensorwise; do
    timeout 100 python3 benchmarks/profile_step.py --preset seed --precision $p --out $R/profile-seed-$p > $R/profile-seed-$p.log 2>&1
    echo "profile $p rc=$? at $(( $(date +%s) - T0 )) s"
  done
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
  COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
  run() {  # name, flags...
    local name=$1; shift
    echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
    timeout 110 python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
    echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
    rm -rf $R/$name/checkpoints $R/$name/tokenizer.json
  }
  SMALL="--preset small --vocab_size 50304 --context_length 1024"
  run small-bf16 $SMALL
  run small-fp8-delayed $SMALL --use_fp8
  run seed-fp8-tensorwise --preset seed --use_fp8 --fp8_recipe tensorwise
  run seed-fp8-delayed --preset seed --use_fp8
) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu*.log
grep -A5 "^| configuration" $R/seed-matrix.log
for p in fp8-delayed fp8-tensorwise; do head -12 $R/profile-seed-$p/breakdown.txt; done
tar czf $OUT/confirm.tar.gz -C $R .
