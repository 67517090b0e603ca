#!/usr/bin/env bash
# Call 26 (kind nvidia-h200, one GPU alone). Call 25 (h200_cudagraph_training.sh) ran the first training run with
# CUDA graphs: 209-216k tokens/s for steps 10-40 (bf16 180k), then the first evaluation failed ("accessing tensor
# output of CUDAGraphs that has been overwritten"): in no-grad evaluation each block's graph call began a new graph
# generation and freed the previous block's output. Since then the Trainer marks a generation per step and per
# evaluation batch, and --compile_mode auto (the default) picks CUDA graphs for fp8 on one GPU with one micro-batch.
#  1. verify_fp8_compilation.py (its compiled fp8 training now runs with CUDA graphs)
#  2. seed training pairs on gutenberg, 200 steps, the defaults (fp8 -> CUDA graphs, bf16 -> default), micro-batch
#     16 and 32, evaluation every 50 steps, a checkpoint at the end
#  3. bf16 with --compile_mode reduce-overhead (evaluation on the shared model under CUDA graphs), 100 steps
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_cgd; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > $R/smi.csv 2> $R/smi.err &
SMI=$!
pack() { tar czf $OUT/cudagraph_default.tar.gz -C $R .; }
echo "$(date -u +%H:%M:%S.%N) start verify" >> $R/phases.txt
timeout 120 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1
echo "verify rc=$? at $(( $(date +%s) - T0 )) s: $(grep -ac PASS $R/verify_fp8_compilation.txt) PASS lines"
echo "$(date -u +%H:%M:%S.%N) end verify" >> $R/phases.txt; pack
DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
COMMON="--warmup_steps 20 --eval_interval 50 --eval_steps 10 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
run() {  # name, seconds, flags...
  local name=$1 secs=$2; shift 2
  echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
  echo "$(date -u +%H:%M:%S.%N) start $name" >> $R/phases.txt
  timeout $secs python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
  echo "$(date -u +%H:%M:%S.%N) end $name" >> $R/phases.txt
  echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
  ls $R/$name/checkpoints 2>/dev/null | tr '\n' ' '; echo
  rm -rf $R/$name/checkpoints $R/$name/tokenizer.json; pack
}
SEED="--preset seed --max_steps 200 --checkpoint_interval 1000"
run seed-fp8 90 $SEED --use_fp8
run seed-bf16 80 $SEED
run seed-fp8-batch32 100 $SEED --use_fp8 --batch_size 32
run seed-bf16-batch32 90 $SEED --batch_size 32
run seed-bf16-cudagraphs 60 --preset seed --max_steps 100 --checkpoint_interval 1000 --compile_mode reduce-overhead
kill $SMI; pack
echo "total $(( $(date +%s) - T0 )) s"
