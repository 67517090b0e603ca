#!/usr/bin/env bash
# Device call (kind nvidia-h200-x2), two single-GPU jobs side by side; ratios only within one GPU's job.
#  GPU 0 (issue 3, 1B fp8 gap): the yardstick's fp8+compile, then our model in the yardstick's bare loop with
#        three rotary-embedding forms (ours in bf16; ours in fp32; the yardstick's interleaved fp32), then the
#        yardstick again (drift). Same loop, same Float8LinearConfig: only the RoPE form differs.
#  GPU 1 (issue 5): where one 1B step's time goes, bf16+compile and fp8+compile (profiler), then
#        --fp8_filter auto against all at 1B (per-layer timing decides; our Trainer's step).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_study; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
REF=../shared/reference/anchor_bench.py
ONEB="--dim 2048 --heads 16 --layers 16 --ffn 5632 --seq 2048 --batch 8"
( export CUDA_VISIBLE_DEVICES=0
  ref() { timeout 120 python3 $REF $ONEB --modes fp8-compile --steps 15 >> $R/rope_1b.jsonl 2>> $R/rope_1b.err; }
  ours() { timeout 120 python3 benchmarks/step_overhead.py --preset 1b --precision fp8-tensorwise --variant bare \
             --rope $1 --steps 15 >> $R/rope_1b.jsonl 2>> $R/rope_1b.err; }
  ref; ours half; ours interleaved-fp32; ours half-fp32; ref; ours half
) > $R/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  for p in bf16 fp8-tensorwise; do
    timeout 150 python3 benchmarks/profile_step.py --preset 1b --batch_size 8 --precision $p --out $R/profile-1b-$p \
      > $R/profile-1b-$p.log 2>&1; echo "profile $p rc=$?"; rm -f $R/profile-1b-$p/trace.json
  done
  M='"model": {"dim": 2048, "n_heads": 16, "n_layers": 16, "intermediate_size": 5632, "context_length": 2048}, "batch_size": 8, "steps": 12'
  for f in all auto; do
    timeout 150 python3 -m cs336_basics.perf.bench_run "{\"name\": \"fp8-$f\", $M, \"precision\": \"fp8-tensorwise\", \"fp8_filter\": \"$f\"}" \
      > $R/filter-$f.log 2>&1; echo "filter $f rc=$?"; grep RESULT $R/filter-$f.log >> $R/filter_1b.jsonl
  done
) > $R/gpu1.log 2>&1 &
wait
cat $R/gpu*.log $R/rope_1b.jsonl $R/filter_1b.jsonl; grep -h "Linear(\|converted\|kept" $R/filter-auto.log
for p in bf16 fp8-tensorwise; do python3 -c "import json; b=json.load(open('$R/profile-1b-$p/breakdown.json')); print('$p', b['wall_ms_per_step'], b['gpu_busy_ms_per_step'], b['by_category_ms_per_step'])"; done
tar czf $OUT/study.tar.gz -C $R .
