#!/usr/bin/env bash
# Device call (kind nvidia-h200, one GPU alone), sixth session, second call. Call 22 (h200_alone_a.sh) found the
# fp8 training runs starting at the bench's speed (steps 4-20: delayed 207k, tensorwise 197k tokens/s) and then
# falling to an erratic 136k-190k while bf16 held 175k-189k; the 20-step bench put delayed at 1.05x with steps
# from 77 to 98 ms. Is it the GPU (clocks, power, temperature) or the host? GPU clocks, power, temperature and
# clock-event reasons are logged every 100 ms through the whole call (smi.csv, phase times in phases.txt).
#  1. long benches (150 timed steps each, every step's time kept): seed bf16+compile, fp8 delayed, fp8 tensorwise.
#  2. training runs on gutenberg, 200 steps, alone: seed fp8 delayed, seed bf16 (as in call 22).
#  3. the 1B matrix: bf16+compile, fp8 delayed, fp8 tensorwise, with the yardstick (bf16, fp8) in the same call.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_b; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > $R/smi.csv 2> $R/smi.err &
SMI=$!
mark() { echo "$(date -u +%H:%M:%S.%N) $*" >> $R/phases.txt; }
pack() { tar czf $OUT/alone_b.tar.gz -C $R .; }
matrix() {  # name, seconds, args...
  local name=$1 secs=$2; shift 2
  echo "python3 optimize_performance.py --timeout 200 --no_layers --out $R/$name $*" > $R/$name.command
  mark "start $name"
  timeout $secs python3 optimize_performance.py --timeout 200 --no_layers --out $R/$name "$@" 2>&1 \
    | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$name.log
  mark "end $name"
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"; grep -A4 "^| configuration" $R/$name.log; pack
}
matrix seed-long 170 --preset seed --steps 150 --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
run() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  mark "start $name"
  timeout $secs python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  mark "end $name"
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json; pack
}
run seed-fp8-delayed 95 --preset seed --use_fp8
run seed-bf16 80 --preset seed
left=$(( 575 - $(date +%s) + T0 ))
if (( left > 150 )); then matrix 1b-matrix $left --preset 1b --steps 12 --compare-reference --modes bf16-compile,fp8-delayed-compile,fp8-tensorwise-compile
else echo "1b-matrix SKIPPED ($left s left)"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
