#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2): float8 with delayed scaling (precision/fp8_delayed.py) against TorchAO's
# dynamic tensorwise and the yardstick, and Python GC scheduling; two single-GPU jobs side by side, ratios only
# within one GPU's job.
#  GPU 0: the seed matrix (bf16+compile, fp8 tensorwise, fp8 delayed; yardstick bf16 and fp8), verify (8 checks),
#         then loss parity on gutenberg at the seed size: bf16 vs fp8 delayed, 200 steps.
#  GPU 1: the 1B matrix (same modes and yardstick), then 1B bf16 in the bench with Python's automatic GC vs
#         a collection every 50 steps (30 timed steps each).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_delayed; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s)
MODES=bf16-compile,fp8-tensorwise-compile,fp8-delayed-compile
matrix() {  # name, preset, steps, seconds
  timeout $4 python3 optimize_performance.py --preset $2 --steps $3 --timeout 150 --no_layers --compare-reference \
    --modes $MODES --out $R/$1 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/$1.log
  echo "$1 rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s"
}
( export CUDA_VISIBLE_DEVICES=0
  matrix seed-matrix seed 15 260
  timeout 170 python3 verify_fp8_compilation.py > $R/verify_fp8_compilation.txt 2>&1; echo "verify rc=$? at $(( $(date +%s) - T0 )) s"
  DATA="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt"
  COMMON="--max_steps 200 --warmup_steps 20 --eval_interval 50 --eval_steps 10 --checkpoint_interval 200 --log_interval 10 --sample_tokens 0 --seed 0 --compile_model --use_flash_attn --no_gradient_checkpointing"
  run() {  # name, flags...
    local name=$1; shift
    if (( $(date +%s) - T0 > 470 )); then echo "$name SKIPPED (time)"; return; fi
    echo "python3 train_h100.py $DATA $COMMON --out_dir $R/$name $*" > $R/$name.command
    timeout 110 python3 train_h100.py $DATA $COMMON --out_dir $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v "step/s, loss" > $R/$name.log
    echo "$name rc=${PIPESTATUS[0]} at $(( $(date +%s) - T0 )) s: $(grep -a '^trained' $R/$name.log)"
    rm -rf $R/$name/checkpoints $R/$name/tokenizer.json
  }
  run seed-fp8-delayed --preset seed --use_fp8 --fp8_recipe delayed
  run seed-bf16 --preset seed
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  matrix 1b-matrix 1b 12 330
  for gc in 0 50; do
    spec=$(python3 -c "import json, dataclasses; from cs336_basics.model.transformer import PRESETS; print(json.dumps(dict(name='1b-bf16-gc$gc', model=dataclasses.asdict(PRESETS['1b']), batch_size=8, steps=30, gc_interval=$gc)))")
    echo "python3 -m cs336_basics.perf.bench_run '$spec'" > $R/gc$gc.command
    timeout 110 python3 -m cs336_basics.perf.bench_run "$spec" > $R/gc$gc.log 2>&1
    echo "gc$gc rc=$? at $(( $(date +%s) - T0 )) s: $(grep -a '^RESULT' $R/gc$gc.log)"
  done
) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu*.log; tail -12 $R/verify_fp8_compilation.txt
for p in seed-matrix 1b-matrix; do grep -A6 "^| configuration" $R/$p.log; done
tar czf $OUT/delayed_gc.tar.gz -C $R .
