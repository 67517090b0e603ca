#!/usr/bin/env bash
# Device call (kind nvidia-h200, one GPU, nothing beside it) after the delayed-scaling state moved into shared
# tensors (a few kernels per update) and its input gradients into bf16: the seed and 1B matrices with the
# yardstick, then loss parity at the seed size (bf16 vs the default fp8, delayed) if the call has time.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_final; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
matrix() {  # name, preset, steps, seconds
  timeout $4 python3 optimize_performance.py --preset $2 --steps $3 --timeout 150 --no_layers --compare-reference \
    --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile --out $R/$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "$1 rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"
}
matrix seed-matrix seed 20 215
matrix 1b-matrix 1b 12 250
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
run() {  # name, flags...
  local name=$1; shift
  if (( $(date +%s) - T0 > 500 )); then echo "$name SKIPPED (time)"; return; fi
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  timeout $(( 585 - $(date +%s) + T0 )) python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json
}
run seed-fp8 --preset seed --use_fp8
for p in seed-matrix 1b-matrix; do grep -A5 "^| configuration" $R/$p.log; done
tar czf $OUT/final.tar.gz -C $R .
