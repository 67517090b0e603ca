#!/usr/bin/env bash
# Fourteenth session, call 59 (kind nvidia-h200, one GPU alone; ~8.5 min). NOTES 68. After calls 57-58, the
# weights cast once per optimizer step and the forward products' fast accumulation are on by default with the
# delayed recipe. This call measures the new default, whose runs must record both (run.json, bench rows):
#  1. seed bench, 30 steps: bf16 and the new fp8 default, with stock TorchAO's rows in the same call;
#  2. the seed guide's command, 120 steps on gutenberg: bf16 then fp8 (a second quality pair after call 58's,
#     whose fp8 runs lay 1.09-1.42% above its one bf16 run);
#  3. the small configuration, 200 steps on gutenberg: bf16 and fp8 (quality at a small size, same call).
#  (Run again as the fifteenth session's plan, NOTES 77: the bf16 weight cache is bf16's default since f4a9f8b, so its bf16
#  rows are the first GPU runs of that default.)
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_new_defaults; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=new_defaults.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
B="--preset seed --steps 30 --timeout 150 --no_layers --modes bf16-compile,fp8-delayed-compile --compare-reference"
echo "python3 optimize_performance.py $B --out \$OUT/bench-seed" > $R/bench-seed.command
timeout 220 python3 optimize_performance.py $B --out $R/bench-seed 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-seed.log
echo "bench-seed at $(( $(date +%s) - T0 )) s:"; grep -A6 "^| configuration" $R/bench-seed.log | tail -4 | cut -d'|' -f2-5,9-11
python3 -c "import json; [print(r.get('name'), r.get('step_ms_mean'), r.get('fp8_weight_cache'), r.get('fp8_fast_accum'), r.get('error', ''), sep='  ') for r in json.load(open('$R/bench-seed/matrix.json'))['rows']]"
pack
G="$GUIDE --max_steps 120 --warmup_steps 10 --eval_interval 60 --eval_steps 10 --log_interval 10"
for name in guide-bf16 guide-fp8; do
  left=$(( 470 - $(date +%s) + T0 ))
  if (( left > 100 )); then run $name $(( left < 140 ? left : 140 )) $G $([ $name = guide-fp8 ] && echo --use_fp8)
  else echo "$name SKIPPED ($left s left)"; fi
done
python3 -c "import json; r=json.load(open('$R/guide-fp8/run.json')); print('run.json fp8_fast_accum', r['fp8_fast_accum'], 'fp8_weight_cache', r['train_config']['fp8_weight_cache'])"
S="--preset small --vocab_size 50304 --context_length 1024 --max_steps 200 --warmup_steps 20 --eval_interval 100 --eval_steps 10 --log_interval 10 --compile_model --use_flash_attn --no_gradient_checkpointing"
for name in small-bf16 small-fp8; do
  left=$(( 585 - $(date +%s) + T0 ))
  if (( left > 50 )); then run $name $(( left < 80 ? left : 80 )) $S $([ $name = small-fp8 ] && echo --use_fp8)
  else echo "$name SKIPPED ($left s left)"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
