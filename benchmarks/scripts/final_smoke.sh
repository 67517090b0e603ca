#!/usr/bin/env bash
# Device call (kind nvidia-h200): the final code on one GPU. The seed guide's train_h100.py command (plus a
# step limit and gutenberg data) with clipping now inside the fused AdamW step, then a resume of that run
# (its summary.json keeps the first segment under "earlier").
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=$OUT/final_smoke; mkdir -p $R
cmd="python3 train_h100.py --dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --use_fp8 --compile_model --use_flash_attn --no_gradient_checkpointing --max_steps 15 --eval_interval 15 --eval_steps 4 --sample_tokens 20 --train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --out_dir /tmp/smoke"
echo "$cmd" > $R/run.command
timeout 110 $cmd 2>&1 | tr '\r' '\n' | grep -v "step/s\]$\|s/step\]$" > $R/run.log; echo "run rc=${PIPESTATUS[0]}"
timeout 80 python3 train_h100.py --resume /tmp/smoke --max_steps 20 --sample_tokens 0 2>&1 | tr '\r' '\n' \
  | grep -v "step/s\]$\|s/step\]$" > $R/resume.log; echo "resume rc=${PIPESTATUS[0]}"
cp /tmp/smoke/summary.json /tmp/smoke/metrics.jsonl $R/ 2>/dev/null
grep -a "attention kernels\|trained\|WARNING\|measured\|resumed\|Error\|error" $R/run.log $R/resume.log
python3 -c "import json; s=json.load(open('$R/summary.json')); print('earlier:', [e['steps'] for e in s.get('earlier', [])], 'steps', s['steps'])"
