#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2): where the float8 head's quality cost comes from, and what its forward buys.
#  GPU 0 (speed, our Trainer's step, one process per row): seed then 1B, bf16+compile, fp8+compile with the head
#        in bf16, fully fp8 (forward + gradients), and fp8 gradients with a bf16 forward.
#  GPU 1 (quality, gutenberg, the 200-step seed runs of call 14): fp8 with the head in bf16, fp8 with the head's
#        forward in bf16, and bf16 and fp8 again (run-to-run spread of the same command).
# (the conversion summary of the bf16-forward runs still reads "e4m3 forward": the line comes from the report)
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_headfwd; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
( export CUDA_VISIBLE_DEVICES=0
  row() {  # preset-json, steps, name, precision, head, [wrapper]
    local spec="{\"name\": \"$3\", \"model\": $1, \"batch_size\": $BS, \"steps\": $2, \"precision\": \"$4\", \"fp8_head\": $5}"
    timeout 120 python3 ${6:-} -m cs336_basics.perf.bench_run "$spec" > $R/speed-$3.log 2>&1
    echo "$3 rc=$? at $(( $(date +%s) - T0 )) s"; grep RESULT $R/speed-$3.log | sed "s/^RESULT //" >> $R/speed.jsonl
  }
  for size in seed 1b; do
    if [ $size = seed ]; then BS=16; M='{"dim": 896, "n_heads": 14, "n_layers": 24, "intermediate_size": 3584}'
    else BS=8; M='{"dim": 2048, "n_heads": 16, "n_layers": 16, "intermediate_size": 5632, "context_length": 2048}'; fi
    row "$M" 15 $size-bf16 bf16 true
    row "$M" 15 $size-fp8-bf16head fp8-tensorwise false
    row "$M" 15 $size-fp8-fp8head fp8-tensorwise true
    row "$M" 15 $size-fp8-fp8head-bf16fwd fp8-tensorwise true benchmarks/head_forward_bf16.py
  done
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
  COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing --preset seed"
  run() {  # name, [wrapper], flags...
    local name=$1 wrap=$2; shift 2
    echo "python3 $wrap train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
    timeout 150 python3 $wrap train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
    echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
    rm -rf $R/$name/checkpoints $R/$name/tokenizer.json
  }
  run seed-fp8-bf16head "" --use_fp8 --no-fp8_head
  run seed-fp8-bf16fwd benchmarks/head_forward_bf16.py --use_fp8
  run seed-bf16-again "" 
  run seed-fp8-again "" --use_fp8
) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu*.log
python3 -c "
import json
for l in open('$R/speed.jsonl'): r=json.loads(l); print(r['name'], r['tokens_per_second'], r['step_ms'], r['step_ms_mean'], r.get('peak_memory_gib'))"
tar czf $OUT/head_forward.tar.gz -C $R .
