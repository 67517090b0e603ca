#!/usr/bin/env bash
# Call 77 (eighteenth session; kind nvidia-h200, one GPU alone; 417 s). NOTES 91, 94-95, 99.
# Since calls 70-73 w1 | w3 run as one float8 product by default. Owed: (1) the new default beside stock TorchAO
# in the same call (call 70's stock rows were cut by the call's limit); (2) a same-call seed-0 quality pair with
# it (call 73's fp8 run was paired only with call 68's bf16, +0.67%).
#  1. seed bench, 30 steps: bf16 and fp8 (the default), with stock TorchAO's rows (call 68: ~215 s);
#  2. the seed guide's command, 120 steps on gutenberg, seed 0: bf16, then fp8.
# Budget (NOTES 94): counted from before the set-up; a part starts only if its whole time limit is left.
set -u
T0=$(date +%s)
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_defaults_w13; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
PACK=defaults_w13.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
left() { echo $(( 585 - $(date +%s) + T0 )); }
B="--preset seed --steps 30 --timeout 150 --no_layers --modes bf16-compile,fp8-delayed-compile --compare-reference"
if (( $(left) >= 240 )); then
  echo "python3 optimize_performance.py $B --out \$OUT/bench-seed" > $R/bench-seed.command
  timeout 240 python3 optimize_performance.py $B --out $R/bench-seed 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-seed.log
  echo "bench-seed at $(( $(date +%s) - T0 )) s:"; grep -a -A6 "^| configuration" $R/bench-seed.log | cut -d'|' -f2-4,9-11
  python3 -c "import json; [print(r.get('name'), r.get('step_ms_mean'), r.get('fp8_merge_w13'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-seed/matrix.json'))['rows']]"
  pack
else echo "bench-seed SKIPPED ($(left) s left)"; fi
G="$GUIDE --max_steps 120 --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10"
for part in guide-bf16:140 guide-fp8:165; do  # fp8's limit includes its first compilation (49.8 s in call 71)
  name=${part%%:*} secs=${part#*:}
  if (( $(left) >= secs )); then run $name $secs $G $([ $name = guide-fp8 ] && echo --use_fp8)
  else echo "$name SKIPPED ($(left) s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
