#!/usr/bin/env bash
# Device call (kind nvidia-h200-x4) after gradient clipping moved into the fused AdamW step (one pass over
# the gradients fewer). The issue-3 bar at 1B measured three times, once per GPU, each with the yardstick on
# the same GPU (GPUs 0-2); on GPU 3, what clipping and the Trainer still cost at 1B in fp8
# (benchmarks/step_overhead.py: bare loop, Trainer, Trainer without clipping).
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_final; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
for g in 0 1 2; do
  ( CUDA_VISIBLE_DEVICES=$g timeout 300 python3 optimize_performance.py --preset 1b --steps 10 --timeout 120 --no_layers \
      --modes bf16-compile,fp8-tensorwise-compile --compare-reference --out $R/1b-gpu$g 2>&1 \
      | tr '\r' '\n' | grep -v "config/s\]\|^configurations:" > $R/1b-gpu$g.log ) &
done
( export CUDA_VISIBLE_DEVICES=3
  for v in bare trainer trainer-noclip; do
    timeout 100 python3 benchmarks/step_overhead.py --preset 1b --precision fp8-tensorwise --variant $v --steps 12 \
      >> $R/step_overhead_1b.jsonl 2>> $R/step_overhead_1b.err
  done ) &
wait
for g in 0 1 2; do grep -A4 "^| configuration" $R/1b-gpu$g.log; done; cat $R/step_overhead_1b.jsonl
tar czf $OUT/final.tar.gz -C $R .
