#!/usr/bin/env bash
# Device call for issue 6 (kind nvidia-h200-x4): train_h100.py on 1, 2 and 4 GPUs (torchrun + FSDP2), the 1B
# model first (the scaling target), then the seed model, bf16 and fp8, on gutenberg; then a checkpoint written
# on 2 GPUs resumed on 4. Jobs on disjoint GPUs run side by side (a 1-GPU run beside a 2-GPU one) to fit one
# call; each job's tokens/s is its own. A phase starts only if the call has time left for it; skipped ones say so.
# Checkpoints are deleted after use (GBs); logs, metrics.jsonl and summary.json are the evidence.
set -u
source benchmarks/device_env.sh > $OUT/env.txt 2>&1 || exit 1
R=/tmp/results_multi; rm -rf $R; mkdir -p $R; cp $OUT/env.txt $R/
source benchmarks/scripts/lib_multi.sh
prep
phase 130 "1b-bf16-1gpu|0|$B1||24" "1b-fp8-1gpu|1|$B1|--use_fp8|24" "1b-bf16-2gpu|2,3|$B1||24"
phase 130 "1b-fp8-2gpu|0,1|$B1|--use_fp8|24" "seed-bf16-1gpu|2|$SD||30" "seed-fp8-1gpu|3|$SD|--use_fp8|30"
phase 120 "1b-bf16-4gpu|0,1,2,3|$B1||24"
phase 120 "1b-fp8-4gpu|0,1,2,3|$B1|--use_fp8|24"
phase 90 "seed-bf16-2gpu|0,1|$SD||30|keep" "seed-fp8-2gpu|2,3|$SD|--use_fp8|30"
resume() {  # the 2-GPU seed checkpoint continued on 4 GPUs (the sharded checkpoint is re-split)
  local cmd="torchrun --standalone --nproc_per_node 4 train_h100.py --resume $R/seed-bf16-2gpu --max_steps 40 --sample_tokens 0"
  echo "$cmd" > $R/resume-2to4.command; timeout 150 $cmd > $R/resume-2to4.log 2>&1
  echo "resume 2 -> 4 rc=$? $(grep -a 'resumed\|trained' $R/resume-2to4.log)"
}
if [ -d $R/seed-bf16-2gpu/checkpoints ] && (( $(date +%s) - T0 + 70 <= DEADLINE )); then resume; else echo "SKIPPED resume"; fi
phase 80 "seed-bf16-4gpu|0,1,2,3|$SD||30"
phase 80 "seed-fp8-4gpu|0,1,2,3|$SD|--use_fp8|30"
rm -rf $R/*/checkpoints
echo "total $(( $(date +%s) - T0 )) s"
tar czf $OUT/multi_gpu.tar.gz -C $R .
