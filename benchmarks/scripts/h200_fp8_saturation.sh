#!/usr/bin/env bash
# Fifteenth session (kind nvidia-h200, one GPU alone; ~8 min). NOTES 74.
# Call 62's seed-1 pair of the seed guide: the fp8 run's loss jumped at the end of the warm-up (step 10: loss
# 8.03, gradient norm 18.8; bf16 7.55, 1.6) and its validation loss ended 3.3% above bf16's. The trainer now counts
# the delayed scales' clipped casts per logged step (metrics.jsonl fp8_saturated / fp8_overflow). Seed 1, log
# every step:
#  A. the default, 30 steps: does the jump come back, and do casts clip far past their range before it;
#  B. --fp8_margin 1 (scales with 2x headroom), 120 steps: the quality criterion again;
#  D. the defaults before call 59 (--no-fp8_fast_accum --no-fp8_weight_cache), 30 steps: did the new defaults bring it;
#  C. --fp8_margin 2, 120 steps.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_fp8_saturation; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
T0=$(date +%s); PACK=fp8_saturation.tar.gz
GUIDE="--dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 --gradient_accumulation_steps 8 --compile_model --use_flash_attn --no_gradient_checkpointing"
FLAGS="--train_data ../shared/data/gutenberg/train.txt --val_data ../shared/data/gutenberg/val.txt --checkpoint_interval 1000 --sample_tokens 0 --seed 1 --use_fp8 --warmup_steps 10 --eval_steps 10 --log_interval 1"
source benchmarks/scripts/lib_single.sh
guarded() {  # name, seconds, flags...: run it only if the call has the time left
  local left=$(( 570 - $(date +%s) + T0 ))
  if (( left > $2 )); then run "$@"; else echo "$1 SKIPPED ($left s left)"; fi
}
guarded seed1-fp8-30 130 $GUIDE --max_steps 30 --eval_interval 30
guarded seed1-fp8-margin1 150 $GUIDE --max_steps 120 --eval_interval 60 --fp8_margin 1
guarded seed1-fp8-old-defaults-30 120 $GUIDE --max_steps 30 --eval_interval 30 --no-fp8_fast_accum --no-fp8_weight_cache
guarded seed1-fp8-margin2 150 $GUIDE --max_steps 120 --eval_interval 60 --fp8_margin 2
for name in seed1-fp8-30 seed1-fp8-margin1 seed1-fp8-old-defaults-30 seed1-fp8-margin2; do
  [ -f $R/$name/metrics.jsonl ] && python3 - $R/$name/metrics.jsonl <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(sys.argv[1].split("/")[-2], " ".join(f"{r['step']}:{r['loss']:.2f}/{r['grad_norm']:.1f}/{r.get('fp8_saturated')}/{r.get('fp8_overflow')}"
                                          for r in rows if "loss" in r and r["step"] <= 14))
PY
done
echo "total $(( $(date +%s) - T0 )) s"
