#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2) after the float8 output head + loss (precision/fp8_head.py) and RoPE in
# float32; two single-GPU jobs side by side, ratios only within one GPU's job.
#  GPU 0: the 1B matrix with the yardstick (bf16+compile, fp8+compile with our fp8 head, fp8+compile with the head
#         in bf16 = like for like with the yardstick), then verify_fp8_compilation.py.
#  GPU 1: loss parity on gutenberg (issue 5: same steps and data, bf16 vs fp8 with the fp8 head), at the seed
#         configuration and a small one (--preset small widths, the seed's tokenizer); then the seed matrix.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_head; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
matrix() {  # name, preset, steps, seconds
  timeout $4 python3 optimize_performance.py --preset $2 --steps $3 --timeout 120 --no_layers --compare-reference \
    --modes bf16-compile,fp8-tensorwise-compile,fp8-tensorwise-compile-bf16head --out $R/$1 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "$1 rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"
}
( export CUDA_VISIBLE_DEVICES=0
  matrix 1b-matrix 1b 12 360
  timeout 190 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1; echo "verify rc=$? at $(( $(date +%s) - T0 )) s"
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
  COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
  run() {  # name, flags...
    local name=$1; shift
    echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
    timeout 150 python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
    echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
    rm -rf $R/$name/checkpoints $R/$name/tokenizer.json
  }
  run seed-bf16 --preset seed
  run seed-fp8 --preset seed --use_fp8
  SMALL="--preset small --vocab_size 50304 --context_length 1024"
  run small-bf16 $SMALL
  run small-fp8 $SMALL --use_fp8
  matrix seed-matrix seed 15 200
) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu*.log; tail -9 $R/verify_fp8_compilation.txt
for p in 1b-matrix seed-matrix; do grep -A5 "^| configuration" $R/$p.log; done
tar czf $OUT/fp8_head.tar.gz -C $R .
