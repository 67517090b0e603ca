#!/usr/bin/env bash
# Thirteenth session, after call 55 made every delayed-layer cast go through our kernel by default (NOTES 62;
# kind nvidia-h200, one GPU alone; ~6 min, what the session's device budget had left).
#  1. seed bench, 30 steps: bf16 and the new fp8 default, with stock TorchAO's rows in the same call;
#  2. the seed guide's command (8 micro-batches a step), 60 steps on gutenberg: fp8 (the default, whose run.json
#     must record fp8_kernel_casts all and whose log shows the kernel's check), then bf16 for the ratio.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_cast_default; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=cast_default.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 0"
source benchmarks/scripts/lib_single.sh
B="--preset seed --steps 30 --timeout 150 --no_layers --modes bf16-compile,fp8-delayed-compile --compare-reference"
echo "python3 optimize_performance.py $B --out \$OUT/bench-seed" > $R/bench-seed.command
timeout 200 python3 optimize_performance.py $B --out $R/bench-seed 2>&1 | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/bench-seed.log
echo "bench-seed at $(( $(date +%s) - T0 )) s:"; grep -A4 "^| configuration" $R/bench-seed.log | tail -2 | cut -d'|' -f2-5,9-11
pack
G="$GUIDE --max_steps 60 --warmup_steps 10 --eval_interval 30 --eval_steps 10 --log_interval 5"
left=$(( 390 - $(date +%s) + T0 ))
(( left > 80 )) && run guide-fp8 $(( left < 110 ? left : 110 )) $G --use_fp8 || echo "guide-fp8 SKIPPED ($left s left)"
grep -a "cast kernel checked\|fp8 casts of" $R/guide-fp8.log
python3 -c "import json; print('run.json fp8_kernel_casts:', json.load(open('$R/guide-fp8/run.json'))['fp8_kernel_casts'])"
left=$(( 390 - $(date +%s) + T0 ))
(( left > 80 )) && run guide-bf16 $left $G || echo "guide-bf16 SKIPPED ($left s left)"
echo "total $(( $(date +%s) - T0 )) s"
