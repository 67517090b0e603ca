#!/usr/bin/env bash
# Call 25 (prepared in the sixth session, run in the seventh). Device call (kind nvidia-h200, one GPU alone) to settle whether
# CUDA graphs become the fp8 default on one GPU (NOTES 25-26): call 24 measured the delayed seed step at 1.154x
# our bf16 with --compile_mode reduce-overhead in the bench (1.106x without), but no training run has used CUDA
# graphs: evaluation, checkpoints, gradient accumulation (the graphs' outputs are overwritten by the next replay)
# and the loss read-back are untested there (gradient accumulation is refused with CUDA graphs since). GPU log every 100 ms as in call 23.
#  1. seed training runs on gutenberg, 200 steps, alone: bf16, fp8 delayed, fp8 delayed with CUDA graphs (one
#     micro-batch per step: with accumulation the Trainer refuses CUDA graphs, pytorch/pytorch#169545), and the
#     bf16 / fp8 pair at micro-batch 32 (fp8 frees memory; twice the work per launch): tokens/s, and the loss
#     curves must agree.
#  2. the 1B pair in training (bf16, fp8 delayed; 60 steps): fp8_gains.json has only bench rows at 1B.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_cg; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > $R/smi.csv 2> $R/smi.err &
SMI=$!
pack() { tar czf $OUT/cudagraph_training.tar.gz -C $R .; }
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
run() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  echo "$(date -u +%H:%M:%S.%N) start $name" >> $R/phases.txt
  timeout $secs python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  echo "$(date -u +%H:%M:%S.%N) end $name" >> $R/phases.txt
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json; pack
}
SEED="--preset seed --max_steps 200 --checkpoint_interval 100"
run seed-bf16 80 $SEED
run seed-fp8-delayed 90 $SEED --use_fp8
run seed-fp8-delayed-cudagraphs 100 $SEED --use_fp8 --compile_mode reduce-overhead
run seed-bf16-batch32 90 $SEED --batch_size 32
run seed-fp8-delayed-batch32 100 $SEED --use_fp8 --batch_size 32
B1="--preset 1b --batch_size 8 --max_steps 60 --eval_interval 30 --checkpoint_interval 60"
left=$(( 570 - $(date +%s) + T0 ))
if (( left > 140 )); then run 1b-bf16 70 $B1; run 1b-fp8-delayed 70 $B1 --use_fp8; else echo "1B pair SKIPPED ($left s left)"; fi
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
