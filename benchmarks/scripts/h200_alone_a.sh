#!/usr/bin/env bash
# Device call (kind nvidia-h200, one GPU alone), sixth session, first call: the current main on the GPU after the
# review changes of the fifth session (delayed layer's weight through fp8_head.to_fp8, micro-batch max of gradient
# amaxes, verify's two new checks), none of which had run on a GPU.
#  1. verify_fp8_compilation.py: all 10 checks.
#  2. the seed matrix: bf16+compile, fp8 delayed, fp8 tensorwise, with the yardstick (bf16, fp8) in the same call.
#  3. training runs alone on the GPU (the fifth session's ran beside other jobs): the seed configuration on
#     gutenberg, 200 steps, bf16 / fp8 delayed / fp8 tensorwise: tokens/s of real training and final val loss.
# Results are packed after each phase, so a call cut short still returns what it finished.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_a; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
pack() { tar czf $OUT/alone_a.tar.gz -C $R .; }
timeout 170 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s"; tail -14 $R/verify_fp8_compilation.txt; pack
timeout 230 python3 optimize_performance.py --preset seed --steps 20 --timeout 150 --no_layers --compare-reference \
  --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile --out $R/seed-matrix 2>&1 \
  | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/seed-matrix.log
echo "seed-matrix rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"; grep -A5 "^| configuration" $R/seed-matrix.log; pack
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
run() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  timeout $secs python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json; pack
}
run seed-fp8-delayed 100 --preset seed --use_fp8
run seed-fp8-tensorwise 100 --preset seed --use_fp8 --fp8_recipe tensorwise
left=$(( 580 - $(date +%s) + T0 ))
if (( left > 75 )); then run seed-bf16 $left --preset seed; else echo "seed-bf16 SKIPPED ($left s left)"; fi
echo "total $(( $(date +%s) - T0 )) s"
